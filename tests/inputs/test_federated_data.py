"""Each client's batches (fedmoap/inputs/federated_data.py): an epoch is a seeded permutation of
the client's rows with a view drawn per row, plain batches keep the rows' order, and labels map
to a client's own classes or an evaluation's label space."""

from __future__ import annotations

import numpy as np
import torch

from fedmoap.inputs.federated_data import FederatedData, Inputs, _union

CLASSES = ["a", "b", "c", "d"]


def data(seed: int = 0) -> FederatedData:
    """10 used training rows (3 views: feature = 100 view + row) and 6 test rows over 2 clients."""
    views = torch.arange(3)[:, None, None] * 100.0 + torch.arange(10)[None, :, None]
    train = Inputs(labels=torch.tensor([0, 1, 1, 2, 3, 0, 0, 2, 2, 1]), features=views.repeat(1, 1, 2))
    test = Inputs(labels=torch.tensor([0, 1, 2, 3, 0, 1]), features=torch.arange(6.0)[None, :, None])
    return FederatedData(
        CLASSES,
        train,
        test,
        train_pos=[torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([6, 7, 8, 9])],
        test_pos=[torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])],
        seed=seed,
    )


def rows_and_views(batches) -> tuple[list[int], list[int]]:
    rows, views = [], []
    for b in batches:
        values = b["features"][:, 0].long()
        rows += (values % 100).tolist()
        views += (values // 100).tolist()
        assert torch.equal(b["label"], data().train.labels[values % 100])  # a row's label travels with it
    return rows, views


def test_an_epoch_is_a_seeded_permutation_of_the_clients_rows_with_a_view_each():
    epoch = data().train_batches(0, t=1, batch_size=4)
    first = rows_and_views(epoch(0))
    assert sorted(first[0]) == [0, 1, 2, 3, 4, 5] and set(first[1]) <= {0, 1, 2}
    assert [len(b["label"]) for b in epoch(1)] == [4, 2]
    assert rows_and_views(data().train_batches(0, 1, 4)(0)) == first  # replayed from (seed, t, cid)
    others = [rows_and_views(data(seed).train_batches(0, t, 4)(0)) for seed, t in ((0, 2), (1, 1))]
    assert all(o != first for o in others)
    assert rows_and_views(data().train_batches(0, 1, 4, purpose="adapt")(0)) != first


def test_plain_batches_keep_the_rows_order_and_view_0():
    rows, views = rows_and_views(data().plain_train_batches(1, batch_size=3))
    assert rows == [6, 7, 8, 9] and views == [0, 0, 0, 0]
    tests = [b["features"][:, 0].tolist() for b in data().test_batches(1, 2)]
    assert tests == [[3.0, 4.0], [5.0]]


def test_own_classes_and_relabelled_evaluation_batches():
    d = data()
    names, relabel = d.own_classes(1)
    assert names == ["a", "b", "c"] and relabel.tolist() == [0, 1, 2, -1]
    assert d.train_size(1) == 4 and d.train_labels(1).tolist() == [0, 2, 2, 1] and d.num_clients == 2
    novel = torch.tensor([-1, -1, 0, 1])  # classes c and d numbered from 0
    (batch,) = d.rows_batches(torch.tensor([2, 3]), 8, relabel=novel)
    assert batch["label"].tolist() == [0, 1] and batch["features"][:, 0].tolist() == [2.0, 3.0]


def test_clients_rows_are_positions_into_their_union():
    used, pos = _union([np.array([7, 3]), np.array([3, 10, 5])])
    assert used.tolist() == [3, 5, 7, 10]
    assert [p.tolist() for p in pos] == [[2, 0], [0, 3, 1]]
    assert [used[p.numpy()].tolist() for p in pos] == [[7, 3], [3, 10, 5]]
