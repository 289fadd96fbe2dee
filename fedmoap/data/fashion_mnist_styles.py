"""``fashion-mnist-styles``: Fashion-MNIST rendered in five styles, an offline domain-shift dataset.

In the spirit of rotated-MNIST benchmarks: every image of Debian's Fashion-MNIST (60,000 train,
10,000 test) is drawn in exactly one style, a balanced seeded assignment (a fixed permutation of
the rows, position mod 5), named in the string column ``domain``:

- ``original``: as published (light garment on black);
- ``inverted``: 255 - x (dark garment on white);
- ``rotated``: turned 90 degrees counter-clockwise;
- ``blurred``: Gaussian blur, sigma 1.5 (7-tap separable kernel, edges replicated);
- ``edges``: Sobel gradient magnitude, scaled to 0..255 per image.

So each domain holds 12,000 training and 2,000 test images, all ten classes, and no underlying
garment appears in two domains. Labels and class names are Fashion-MNIST's. Use it with
``--data.partition domain_dirichlet --data.domain_column domain`` (clients = k x 5). The split id
(feature and pixel caches) is ``fashion-mnist-styles-v1-`` + a digest of the source pixels and
labels, stable across processes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedmoap.data.fashion_mnist import CLASS_NAMES, DEFAULT_DIR, _image_column, read_splits

__all__ = ["STYLES", "BLUR_SIGMA", "load_fashion_mnist_styles", "assign_styles", "render"]

STYLES = ("original", "inverted", "rotated", "blurred", "edges")
"""Domain names, in the order of the assignment (row's position in the permutation mod 5)."""
BLUR_SIGMA = 1.5
_VERSION = "fashion-mnist-styles-v1"


def load_fashion_mnist_styles(path: str | Path | None = None):
    """(``datasets.DatasetDict`` with splits train/test and columns image, label, domain; the
    data id). ``path``: a directory of the four Fashion-MNIST IDX files (default: Debian's)."""
    import datasets

    root = Path(path) if path is not None else DEFAULT_DIR
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES), "domain": datasets.Value("string")}
    )
    h, splits = hashlib.sha256(_VERSION.encode()), {}
    for split, images, labels in read_splits(root):
        h.update(images.tobytes())
        h.update(labels.tobytes())
        styles = assign_styles(len(images), split)
        rendered = render(images, styles)
        splits[split] = datasets.Dataset(
            _arrow_table(rendered, labels, styles, features), info=datasets.DatasetInfo(features=features), split=split
        )
    return datasets.DatasetDict(splits), f"{_VERSION}-{h.hexdigest()[:16]}"


def assign_styles(n: int, split: str) -> np.ndarray:
    """(n,) style index of every row: balanced (counts differ by at most one), seeded per split."""
    seed = int.from_bytes(hashlib.sha256(f"{_VERSION}/{split}".encode()).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(n)
    styles = np.empty(n, np.int64)
    styles[order] = np.arange(n) % len(STYLES)
    return styles


def render(images: np.ndarray, styles: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 images, each drawn in its style (index into :data:`STYLES`)."""
    out = images.copy()
    for s, name in enumerate(STYLES):
        rows = np.flatnonzero(styles == s)
        if len(rows) and name != "original":
            out[rows] = _STYLE[name](images[rows])
    return out


def _inverted(x: np.ndarray) -> np.ndarray:
    return 255 - x


def _rotated(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(x, k=1, axes=(1, 2)))


def _conv(x: np.ndarray, kernel: torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(x).float().unsqueeze(1)
    pad = (kernel.shape[-1] // 2, kernel.shape[-1] // 2, kernel.shape[-2] // 2, kernel.shape[-2] // 2)
    return F.conv2d(F.pad(t, pad, mode="replicate"), kernel[None, None]).squeeze(1)


def _blurred(x: np.ndarray) -> np.ndarray:
    taps = torch.arange(-3, 4, dtype=torch.float64)
    g = torch.exp(-taps.square() / (2 * BLUR_SIGMA**2))
    g = (g / g.sum()).float()
    return _conv(x, g[:, None] * g[None, :]).round().clamp(0, 255).to(torch.uint8).numpy()


def _edges(x: np.ndarray) -> np.ndarray:
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    mag = torch.sqrt(_conv(x, sobel).square() + _conv(x, sobel.t()).square())
    peak = mag.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    return (255 * mag / peak).round().clamp(0, 255).to(torch.uint8).numpy()


_STYLE = {"inverted": _inverted, "rotated": _rotated, "blurred": _blurred, "edges": _edges}


def _arrow_table(images: np.ndarray, labels: np.ndarray, styles: np.ndarray, features):
    """Arrow table in ``features``' schema (image, label, domain)."""
    import pyarrow as pa

    domain_col = pa.array(np.asarray(STYLES, dtype=object)[styles].tolist(), pa.string())
    return pa.Table.from_arrays(
        [_image_column(images), pa.array(labels.astype(np.int64)), domain_col], schema=features.arrow_schema
    )
