"""How far each client's test mix is from its training mix under data.test_from share and whole:
total variation over the offline default's splits (Fashion-MNIST, 5 clients, 8 shots; 3 seeds).

    python scripts/diagnostics/test_mix.py
"""

import numpy as np

from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split


def total_variations(args: DataArgs, source, seeds: int = 3) -> list[float]:
    """Each client's total variation between its training and test label mixes, over ``seeds`` splits."""
    tvs = []
    for seed in range(seeds):
        split = make_split(args, source, seed)
        for train, test in zip(split.train, split.test):
            a = np.bincount(source.train_labels[train], minlength=len(source.classnames)) / len(train)
            b = np.bincount(source.test_labels[test], minlength=len(source.classnames)) / len(test)
            tvs.append(0.5 * np.abs(a - b).sum())
    return tvs


def main() -> None:
    for test_from in ("share", "whole"):
        for partition, extra in (
            ("dirichlet", {"alpha": 0.1}),
            ("dirichlet", {"alpha": 0.5}),
            ("pathological", {"classes_per_client": 2}),
        ):
            args = DataArgs(partition=partition, test_from=test_from, **extra)
            tvs = total_variations(args, load_source(args))
            print(
                f"{test_from} {partition} {extra}: max TV {max(tvs):.3f}, mean {np.mean(tvs):.3f} (5 clients x 3 seeds)"
            )


if __name__ == "__main__":
    main()
