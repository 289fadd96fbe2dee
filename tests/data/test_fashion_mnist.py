"""Fashion-MNIST from its IDX files (fedmoap/data/fashion_mnist.py): pixels and labels as written,
gzipped or not, an id from the content, and each malformed file named."""

from __future__ import annotations

import numpy as np
import pytest

from fedmoap.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist, load_fashion_mnist_with_id
from fedmoap.errors import FedmoapError
from tests.data.conftest import write_idx


def test_images_and_labels_are_the_files(tiny_fashion_mnist):
    root, data = tiny_fashion_mnist
    ds, data_id = load_fashion_mnist_with_id(root)
    for split, (images, labels) in data.items():
        assert ds[split]["label"] == labels.tolist()
        decoded = np.stack([np.asarray(img) for img in ds[split]["image"]])
        assert np.array_equal(decoded, images) and ds[split][0]["image"].mode == "L"
    assert ds["train"].features["label"].names == CLASS_NAMES
    assert data_id.startswith("fashion-mnist-v1-") and load_fashion_mnist_with_id(root)[1] == data_id


def test_the_id_follows_the_content(tiny_fashion_mnist):
    root, data = tiny_fashion_mnist
    before = load_fashion_mnist_with_id(root)[1]
    images, labels = data["test"]
    write_idx(root / "t10k-labels-idx1-ubyte", (labels + 1) % 10, 2049, compress=False)
    assert load_fashion_mnist_with_id(root)[1] != before


def test_malformed_files_are_named(tiny_fashion_mnist):
    root, data = tiny_fashion_mnist
    images, labels = data["test"]
    write_idx(root / "t10k-labels-idx1-ubyte", labels[:-1], 2049, compress=False)
    with pytest.raises(FedmoapError, match="test has 7 images but 6 labels"):
        load_fashion_mnist(root)
    write_idx(root / "t10k-labels-idx1-ubyte", labels, 2051, compress=False)
    with pytest.raises(FedmoapError, match="magic number 2051, expected 2049 \\(not an IDX file of labels\\)"):
        load_fashion_mnist(root)
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(7, 10), 2049, compress=False)
    with pytest.raises(FedmoapError, match="test labels go up to 10, expected 0..9"):
        load_fashion_mnist(root)
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0")
    with pytest.raises(FedmoapError, match="is truncated \\(2 bytes\\)"):
        load_fashion_mnist(root)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FedmoapError, match="t10k-labels-idx1-ubyte.gz not found"):
        load_fashion_mnist(root)
