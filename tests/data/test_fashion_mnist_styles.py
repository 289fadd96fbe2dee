"""``fashion-mnist-styles`` (fedmoap/data/fashion_mnist_styles.py): each image in one style, the
styles balanced and seeded, the blur and the edges exactly torchvision's and SciPy's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.transforms.functional import gaussian_blur

from fedmoap.config.sections import DataArgs
from fedmoap.data.fashion_mnist import DEFAULT_DIR
from fedmoap.data.fashion_mnist_styles import BLUR_SIGMA, STYLES, assign_styles, load_fashion_mnist_styles, render
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split


def framed(n: int, seed: int = 0) -> np.ndarray:
    """Random 28x28 images inside a black frame 4 pixels wide (reflected and replicated edges agree)."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 4:-4, 4:-4] = np.random.default_rng(seed).integers(0, 256, (n, 20, 20), dtype=np.uint8)
    return images


def test_blur_is_torchvisions_gaussian_blur():
    images = framed(3)
    out = render(images, np.full(3, STYLES.index("blurred")))
    ref = gaussian_blur(torch.from_numpy(images).float()[:, None], [7, 7], [BLUR_SIGMA, BLUR_SIGMA])[:, 0]
    assert np.abs(out.astype(int) - ref.round().clamp(0, 255).numpy().astype(int)).max() <= 1


def test_edges_are_the_sobel_magnitude_scaled_per_image():
    images = framed(3, seed=1)
    out = render(images, np.full(3, STYLES.index("edges")))
    for img, got in zip(images.astype(np.float64), out):
        mag = np.hypot(ndimage.sobel(img, 0, mode="nearest"), ndimage.sobel(img, 1, mode="nearest"))
        assert np.abs(got.astype(int) - np.round(255 * mag / mag.max()).astype(int)).max() <= 1
    assert (out.reshape(3, -1).max(1) == 255).all()


def test_styles_are_balanced_seeded_and_stored_as_names(tiny_fashion_mnist):
    root, data = tiny_fashion_mnist
    ds, data_id = load_fashion_mnist_styles(root)
    assert data_id.startswith("fashion-mnist-styles-v1-")
    images, labels = data["train"]
    styles = assign_styles(len(images), "train")
    assert ds["train"]["domain"] == [STYLES[s] for s in styles] and ds["train"]["label"] == labels.tolist()
    decoded = np.stack([np.asarray(img) for img in ds["train"]["image"]])
    assert np.array_equal(decoded, render(images, styles))


def test_styles_render_and_assignment():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    styles = np.arange(10) % 5
    out = render(images, styles)
    assert np.array_equal(out[0], images[0]) and np.array_equal(out[1], 255 - images[1])
    assert np.array_equal(out[2], np.rot90(images[2]))
    assert out[3].std() < images[3].std() and out[4].max() == 255
    s = assign_styles(1003, "train")
    assert np.bincount(s).max() - np.bincount(s).min() <= 1
    assert np.array_equal(s, assign_styles(1003, "train")) and not np.array_equal(s, assign_styles(1003, "test"))


@pytest.mark.skipif(not (DEFAULT_DIR / "train-labels-idx1-ubyte.gz").exists(), reason="no Fashion-MNIST")
def test_fashion_mnist_styles_source_and_domain_split():
    args = DataArgs(
        source="fashion-mnist-styles",
        domain_column="domain",
        partition="domain_dirichlet",
        num_clients=5,
        alpha=0.5,
        shots=4,
        max_test_per_client=20,
    )
    source = load_source(args)
    assert source.classnames[0] == "T-shirt/top" and len(source.train_labels) == 60000
    assert sorted(set(source.train.select(range(50))["domain"])) == sorted(STYLES)
    assert source.train_id.startswith("fashion-mnist-styles-v1-")
    assert load_source(args).train_id == source.train_id
    split = make_split(args, source, seed=0)
    for cid in range(5):  # one client per domain: its train and test rows share that domain
        domains = set(source.train_domains[split.train[cid]]) | set(source.test_domains[split.test[cid]])
        assert len(domains) == 1
