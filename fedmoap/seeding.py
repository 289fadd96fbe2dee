"""Every random draw of a run derives from the run seed and named tags (round, client id, purpose).

Seeds come from a cryptographic hash of the tags, not from a shared generator, so a client's
random stream does not depend on which clients ran before it, on which process, or after a resume.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["derive_seed", "torch_generator", "numpy_rng"]


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed determined by ``seed`` and ``tags`` alone (stable across processes and runs)."""
    text = "/".join([str(int(seed)), *map(str, tags)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``derive_seed(seed, *tags)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


def numpy_rng(seed: int, *tags: object) -> np.random.Generator:
    """A NumPy generator seeded from ``derive_seed(seed, *tags)``."""
    return np.random.default_rng(derive_seed(seed, *tags))
