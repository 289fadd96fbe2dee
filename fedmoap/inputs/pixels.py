"""Decoded images for methods that run the image tower themselves (vision prompts).

Every image a run uses is decoded, resized and center-cropped once (the backbone's evaluation
transform up to the tensor conversion) and kept as uint8 in an on-disk, memory-mapped cache
keyed like the feature cache. Training batches are augmented on tensors (random resized crop +
horizontal flip, as the backbones' PIL training transform) with a caller-given generator, so a
batch is a pure function of (seed, round, client, epoch); evaluation batches are the cached
images themselves. Only the normalisation remains, done by the backbone.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fedmoap.backbones.base import Backbone
from fedmoap.data.images import load_images
from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_write_bytes, cache_lock

__all__ = ["PIXEL_FORMAT", "SCALE", "RATIO", "PixelCache", "crop_params", "augment"]

PIXEL_FORMAT = 1
SCALE = (0.08, 1.0)
"""Random resized crop: range of the crop's area fraction (torchvision's default)."""
RATIO = (3 / 4, 4 / 3)
"""Random resized crop: range of the crop's aspect ratio (torchvision's default)."""


class PixelCache:
    """uint8 images (N, 3, S, S) of dataset rows after the backbone's eval resize and crop."""

    def __init__(self, root: Path, backbone: Backbone) -> None:
        self.root = Path(root).expanduser() / "pixels"
        self.transform = backbone.pixel_transform()
        self.computed = 0
        """Images decoded by this object (the rest came from disk)."""

    def key(self, data_id: str, image_column: str) -> str:
        text = f"{PIXEL_FORMAT}|{data_id}|{image_column}|{self.transform!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(
        self, ds: Dataset, data_id: str, rows: np.ndarray, image_column: str, chunk: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """(cached row ids, sorted; memory-mapped uint8 images of those rows), covering ``rows``."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        base = self.root / self.key(data_id, image_column)
        try:  # replaced by renames, so readable without the lock unless caught between two
            have, images = self._load(base)
        except FedmoapError:
            have = np.zeros(0, np.int64)
        if len(rows) and np.isin(rows, have).all():  # all cached: nothing to write, no lock needed
            return have, images
        with cache_lock(base.with_suffix(".npy"), "data.feature_cache", len(np.setdiff1d(rows, have))):
            have, images = self._load(base)
            missing = np.setdiff1d(rows, have)
            if len(missing):
                merged = np.concatenate([have, missing])
                order = np.argsort(merged, kind="stable")
                where = np.empty_like(order)
                where[order] = np.arange(len(order))  # position of each merged entry when sorted
                probe = self.transform(load_images(ds, missing[:1], image_column, data_id)[0]).numpy()
                tmp = base.with_suffix(".tmp.npy")
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(merged), *probe.shape))
                for start in range(0, len(have), chunk):
                    stop = min(start + chunk, len(have))
                    out[where[start:stop]] = images[start:stop]
                for start in range(0, len(missing), chunk):
                    part = missing[start : start + chunk]
                    out[where[len(have) + start : len(have) + start + len(part)]] = np.stack(
                        [self.transform(img).numpy() for img in load_images(ds, part, image_column, data_id)]
                    )
                out.flush()
                del out
                self.computed += len(missing)
                atomic_write_bytes(base.with_suffix(".rows.npy"), _npy_bytes(merged[order]))
                os.replace(tmp, base.with_suffix(".npy"))
                have, images = self._load(base)
        return have, images

    def _load(self, base: Path) -> tuple[np.ndarray, np.ndarray]:
        data, rows = base.with_suffix(".npy"), base.with_suffix(".rows.npy")
        if not data.exists() or not rows.exists():
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        try:
            have = np.load(rows)
            images = np.load(data, mmap_mode="r")
            if (
                images.dtype != np.uint8
                or images.ndim != 4
                or have.ndim != 1
                or len(images) != len(have)
                or not (have[1:] > have[:-1]).all()
            ):  # sorted: rows are looked up by bisection
                raise ValueError("not an image table of this format")
            return have, images
        except Exception as exc:
            raise FedmoapError(f"pixel cache file {data} is corrupt ({exc!r}); delete it to recompute") from None


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def crop_params(height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, torchvision's algorithm on ``gen``."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    ratio = width / height  # fallback: a centre crop, as torchvision does
    if ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """(B, 3, S, S) uint8 -> float in [0, 1]: per image a random resized crop back to S (bicubic,
    antialiased) and a horizontal flip with probability 1/2, all drawn from ``gen``."""
    size = list(images.shape[-2:])
    x = images.float().div_(255)
    out = torch.empty_like(x)
    for i in range(len(x)):
        top, left, h, w = crop_params(size[0], size[1], gen)
        img = TF.resized_crop(x[i], top, left, h, w, size, InterpolationMode.BICUBIC, antialias=True)
        if torch.rand(1, generator=gen).item() < 0.5:
            img = img.flip(-1)
        out[i] = img
    return out.clamp_(0, 1)
