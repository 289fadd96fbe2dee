"""PEP-FedPT's CIFAR-100 split (``label_uniform``, SGPT's "noniid-labeluni"). The evidence's domain
dataset (``fashion-mnist-styles``) is tested in test_fashion_mnist_styles.py."""

from __future__ import annotations

import numpy as np
import pytest

from fedmoap.data import partition as P


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
