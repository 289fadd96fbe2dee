"""Fixtures of the data tests: a tiny Fashion-MNIST in its IDX format."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

SPLIT_SIZES = {"train": 12, "test": 7}


def write_idx(path, data: np.ndarray, magic: int, compress: bool = True) -> None:
    """``data`` (uint8) as an IDX file: big-endian magic and one count per dimension, then the bytes."""
    raw = np.array([magic, *data.shape], ">u4").tobytes() + data.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    """A directory of the four IDX files (train gzipped, test not) with random 28x28 images and
    labels; (directory, {split: (images, labels)})."""
    rng = np.random.default_rng(0)
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    data = {}
    for split, n in SPLIT_SIZES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(tmp_path / files[split][0], images, 2051, compress=split == "train")
        write_idx(tmp_path / files[split][1], labels, 2049, compress=split == "train")
        data[split] = (images, labels)
    return tmp_path, data
