"""The evidence's domain dataset (``fashion-mnist-styles``) and PEP-FedPT's CIFAR-100 split
(``label_uniform``, SGPT's "noniid-labeluni")."""

from __future__ import annotations

import numpy as np
import pytest

from fedmoap.config.sections import DataArgs
from fedmoap.data import partition as P
from fedmoap.data.fashion_mnist import DEFAULT_DIR
from fedmoap.data.fashion_mnist_styles import STYLES, assign_styles, render
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split


def test_label_uniform_every_class_equally_shared():
    labels = np.repeat(np.arange(20), 30)
    parts = P.label_uniform(labels, 10, 4, np.random.default_rng(0))
    held = [set(labels[p].tolist()) for p in parts]
    assert all(len(h) == 4 for h in held)
    assert all(sum(c in h for h in held) == 2 for c in range(20))  # 10 * 4 / 20
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))  # all used, once
    shares = [np.mean(labels[p] == c) for p, h in zip(parts, held) for c in h]
    assert min(shares) > 0.1
    with pytest.raises(ValueError, match="divisible"):
        P.label_uniform(labels, 3, 3, np.random.default_rng(0))


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
