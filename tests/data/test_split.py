"""Client splits (fedmoap/data/split.py): each client's test set follows the mix of classes it
trains on."""

from __future__ import annotations

import numpy as np

from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split


def test_test_sets_follow_the_k_shot_training_mix():
    source = load_source(DataArgs(source="synthetic"))
    for follows in ("train", "partition"):
        args = DataArgs(
            source="synthetic", num_clients=4, alpha=0.3, shots=2, test_follows=follows, max_test_per_client=None
        )
        split = make_split(args, source, seed=0)
        for train, test in zip(split.train, split.test):
            counts = np.bincount(source.train_labels[train], minlength=10)
            tests = np.bincount(source.test_labels[test], minlength=10)
            if follows == "train":  # a class the client does not train on is not in its test set
                assert not tests[counts == 0].any()
                share = counts / counts.sum()
                assert np.abs(tests / tests.sum() - share).max() < 0.25
    # the old rule differs on this split: some client is tested on classes it never trained
    old = make_split(
        DataArgs(
            source="synthetic", num_clients=4, alpha=0.3, shots=2, test_follows="partition", max_test_per_client=None
        ),
        source,
        seed=0,
    )
    new = make_split(
        DataArgs(source="synthetic", num_clients=4, alpha=0.3, shots=2, max_test_per_client=None), source, seed=0
    )
    assert any(not np.array_equal(a, b) for a, b in zip(old.test, new.test))
