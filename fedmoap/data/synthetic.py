"""A small generated image dataset for tests and the smoke config: coloured squares on noise.

Each class is a colour with a nameable word, so even a tiny text tower sees different prompts per
class; each sample also has a domain (light or dark background) for per-domain partitions. The data
are a pure function of ``seed`` and sizes, and carry a stable id for the feature cache.
"""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

__all__ = ["COLOURS", "make_synthetic", "synthetic_id"]

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 30),
    "cyan": (40, 210, 220),
    "magenta": (210, 40, 200),
    "orange": (240, 140, 20),
    "purple": (120, 40, 160),
    "brown": (120, 70, 30),
    "grey": (128, 128, 128),
}


def make_synthetic(
    num_classes: int = 10, train_per_class: int = 40, test_per_class: int = 20, size: int = 32, seed: int = 0
) -> DatasetDict:
    """Train/test splits with columns ``image`` (PIL), ``label`` (ClassLabel) and ``domain``."""
    if not 1 <= num_classes <= len(COLOURS):
        raise ValueError(f"num_classes must be in [1, {len(COLOURS)}]")
    names = list(COLOURS)[:num_classes]
    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "label": ClassLabel(names=names), "domain": Value("int64")})
    splits = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(num_classes), per_class)
        rng.shuffle(labels)
        domains = rng.integers(0, 2, size=len(labels))
        images = [_draw(rng, COLOURS[names[y]], d, size) for y, d in zip(labels, domains)]
        splits[split] = Dataset.from_dict(
            {"image": images, "label": labels.tolist(), "domain": domains.tolist()}, features=features
        )
    return DatasetDict(splits)


def synthetic_id(
    num_classes: int = 10, train_per_class: int = 40, test_per_class: int = 20, size: int = 32, seed: int = 0
) -> str:
    """The identity of :func:`make_synthetic`'s output, for cache keys."""
    return f"synthetic-v1-{num_classes}-{train_per_class}-{test_per_class}-{size}-{seed}"


def _draw(rng: np.random.Generator, colour: tuple[int, int, int], domain: int, size: int) -> np.ndarray:
    background = 200 if domain == 0 else 40
    img = rng.normal(background, 25, size=(size, size, 3))
    side = int(rng.integers(size // 3, size // 2 + 1))
    y, x = rng.integers(0, size - side, size=2)
    img[y : y + side, x : x + side] = np.asarray(colour) + rng.normal(0, 15, size=3)
    return np.clip(img, 0, 255).astype(np.uint8)
