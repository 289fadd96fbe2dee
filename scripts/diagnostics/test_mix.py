"""How far each client's test mix is from its training mix under data.test_from share and whole:
total variation over the offline default's splits (Fashion-MNIST, 5 clients, 8 shots; 3 seeds).

    python scripts/diagnostics/test_mix.py
"""

import numpy as np

from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split

for test_from in ("share", "whole"):
    for partition, extra in (
        ("dirichlet", {"alpha": 0.1}),
        ("dirichlet", {"alpha": 0.5}),
        ("pathological", {"classes_per_client": 2}),
    ):
        args = DataArgs(partition=partition, test_from=test_from, **extra)
        source = load_source(args)
        tvs = []
        for seed in range(3):
            split = make_split(args, source, seed)
            for train, test in zip(split.train, split.test):
                a = np.bincount(source.train_labels[train], minlength=10) / len(train)
                b = np.bincount(source.test_labels[test], minlength=10) / len(test)
                tvs.append(0.5 * np.abs(a - b).sum())
        print(f"{test_from} {partition} {extra}: max TV {max(tvs):.3f}, mean {np.mean(tvs):.3f} (5 clients x 3 seeds)")
