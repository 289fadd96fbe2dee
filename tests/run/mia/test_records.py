"""The attack's records (fedmoap/run/mia/records.py): losses from the softmax outputs, balanced
members and non-members, groups within domains, and the images shadow federations may use."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from fedmoap.run.mia.records import Records, balance, group_labels, shadow_pools


def test_losses_are_the_cross_entropy_of_the_true_label():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    label = torch.tensor([0, 1, 2, 3, 0, 1])
    n = torch.arange(6)
    recs = Records(logits.softmax(-1), torch.ones(6, dtype=torch.long), label, n, n)
    torch.testing.assert_close(
        recs.losses(), F.cross_entropy(logits.double(), label, reduction="none"), rtol=1e-6, atol=1e-6
    )
    both = Records.cat([recs, recs])
    assert len(both) == 12 and torch.equal(both.label, torch.cat([label, label]))


def test_balance_keeps_as_many_members_as_non_members_per_class():
    labels_in = torch.tensor([0, 0, 0, 1, 1, 2])
    labels_out = torch.tensor([0, 1, 1, 1, 1, 3])
    keep_in, keep_out = balance(labels_in, labels_out, np.random.default_rng(0))
    kept_in, kept_out = labels_in.numpy()[keep_in], labels_out.numpy()[keep_out]
    for k in range(4):
        assert (kept_in == k).sum() == (kept_out == k).sum() == min((labels_in == k).sum(), (labels_out == k).sum())
    assert len(set(keep_in.tolist())) == len(keep_in) and keep_in.dtype == np.int64
    again = balance(labels_in, labels_out, np.random.default_rng(0))
    assert np.array_equal(again[0], keep_in) and np.array_equal(again[1], keep_out)


def test_groups_are_classes_within_domains():
    labels, domains = np.array([0, 2, 1]), np.array([1, 0, 2])
    assert group_labels(labels, None, 3).tolist() == [0, 2, 1]
    assert group_labels(labels, domains, 3).tolist() == [3, 2, 7]


def test_shadow_pools_are_the_images_no_client_uses():
    split = SimpleNamespace(train=[np.array([0, 2]), np.array([2, 5])], test=[np.array([1]), np.array([0, 1])])
    train_pool, test_pool = shadow_pools(split, (np.zeros(7), np.zeros(3)))
    assert train_pool.tolist() == [1, 3, 4, 6] and test_pool.tolist() == [2]
