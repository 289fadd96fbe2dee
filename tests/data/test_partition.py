"""Property tests for fedmoap.data.partition.

The module is imported as ``P`` (not ``from ... import test_like_train``) so
pytest does not collect the partitioner ``test_like_train`` as a test.
"""

from functools import partial

import numpy as np
import pytest

import fedmoap.data.partition as P


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def balanced_labels(num_classes: int = 10, per_class: int = 100, seed: int = 0) -> np.ndarray:
    return rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def assert_well_formed(clients: list[np.ndarray], n: int) -> None:
    for idx in clients:
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0), "indices must be sorted and unique"
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n)


def assert_disjoint(clients: list[np.ndarray]) -> None:
    allidx = np.concatenate(clients)
    assert allidx.size == np.unique(allidx).size, "a sample is assigned twice"


def label_props(labels: np.ndarray, idx: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels[idx], minlength=num_classes) / idx.size


# ------------------------------------------------------------------------ iid
def test_iid_covers_everything_near_equal_and_is_seeded():
    labels = balanced_labels(per_class=31)
    clients = P.iid(labels, 7, rng(1))
    assert_well_formed(clients, labels.size)
    assert_disjoint(clients)
    assert np.concatenate(clients).size == labels.size
    sizes = [c.size for c in clients]
    assert max(sizes) - min(sizes) <= 1
    same = P.iid(labels, 7, rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(clients, same))


# ---------------------------------------------------------------- pathological
@pytest.mark.parametrize("num_clients,cpc", [(5, None), (3, None), (4, 2), (10, 1)])
def test_pathological_disjoint_classes_full_coverage(num_clients, cpc):
    labels = balanced_labels(num_classes=10, per_class=20)
    clients = P.pathological(labels, num_clients, rng(3), classes_per_client=cpc)
    assert len(clients) == num_clients
    assert_well_formed(clients, labels.size)
    assert_disjoint(clients)
    class_sets = [set(labels[c].tolist()) for c in clients]
    for i in range(num_clients):
        assert class_sets[i], "every client gets at least one class"
        if cpc is not None:
            assert len(class_sets[i]) == cpc
        for j in range(i + 1, num_clients):
            assert not class_sets[i] & class_sets[j]
    assigned = set().union(*class_sets)
    expected = np.flatnonzero(np.isin(labels, list(assigned)))
    assert np.array_equal(np.sort(np.concatenate(clients)), expected)
    if cpc is None:  # every class is handed out, split evenly
        assert assigned == set(range(10))
        assert max(map(len, class_sets)) - min(map(len, class_sets)) <= 1


def test_pathological_class_assignment_is_random_and_seeded():
    labels = balanced_labels(num_classes=10, per_class=5)
    assign = [tuple(labels[c].min() for c in P.pathological(labels, 5, rng(s))) for s in range(6)]
    assert len(set(assign)) > 1, "class ids are not shuffled"
    first = P.pathological(labels, 5, rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(first, P.pathological(labels, 5, rng(0))))


def test_pathological_errors():
    labels = balanced_labels(num_classes=3, per_class=5)
    with pytest.raises(ValueError, match="num_clients"):
        P.pathological(labels, 4, rng())
    with pytest.raises(ValueError, match="classes_per_client"):
        P.pathological(labels, 2, rng(), classes_per_client=2)


# ------------------------------------------------------------------ dirichlet
@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_dirichlet_exact_cover_and_min_size(alpha):
    labels = balanced_labels()
    clients = P.dirichlet(labels, 10, alpha, rng(5), min_size=10)
    assert len(clients) == 10
    assert_well_formed(clients, labels.size)
    assert_disjoint(clients)
    assert np.array_equal(np.sort(np.concatenate(clients)), np.arange(labels.size))
    assert min(c.size for c in clients) >= 10


def test_dirichlet_determinism():
    labels = balanced_labels()
    a = P.dirichlet(labels, 8, 0.5, rng(11))
    b = P.dirichlet(labels, 8, 0.5, rng(11))
    c = P.dirichlet(labels, 8, 0.5, rng(12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_shuffles_within_class():
    labels = np.repeat(np.arange(2), 200)  # sorted: an unshuffled split gives index runs
    for c in P.dirichlet(labels, 4, 100.0, rng(6)):
        for cls in (0, 1):
            assert np.any(np.diff(c[labels[c] == cls]) > 1), "class samples not shuffled"


def test_dirichlet_alpha_controls_skew():
    labels = balanced_labels(num_classes=10, per_class=200)

    def mean_max_share(alpha: float) -> float:
        clients = P.dirichlet(labels, 10, alpha, rng(7))
        return float(np.mean([label_props(labels, c, 10).max() for c in clients]))

    skewed, flat = mean_max_share(0.1), mean_max_share(100.0)
    assert skewed > 0.5, skewed
    assert flat < 0.2, flat
    assert skewed > flat + 0.3
    for c in P.dirichlet(labels, 10, 100.0, rng(8)):
        assert np.abs(label_props(labels, c, 10) - 0.1).max() < 0.05


def test_dirichlet_gives_up_with_helpful_error():
    labels = balanced_labels(num_classes=2, per_class=50)
    with pytest.raises(ValueError, match="larger alpha"):
        P.dirichlet(labels, 10, 0.01, rng(), min_size=5, max_tries=5)
    with pytest.raises(ValueError, match="min_size"):
        P.dirichlet(labels, 10, 1.0, rng(), min_size=11)


# ------------------------------------------------------------------- by_group
def test_by_group_one_group_per_client_group_major():
    groups = np.repeat(np.array(["sketch", "clipart", "real"]), 300)  # unsorted names
    labels = np.tile(np.repeat(np.arange(10), 30), 3)
    clients = P.by_group(groups, labels, 4, partial(P.dirichlet, alpha=0.5), rng(2))
    assert len(clients) == 12
    assert_well_formed(clients, labels.size)
    assert_disjoint(clients)
    assert np.concatenate(clients).size == labels.size
    client_group = []
    for c in clients:
        gs = np.unique(groups[c])
        assert gs.size == 1, "a client mixes groups"
        client_group.append(gs[0])
    assert client_group == ["clipart"] * 4 + ["real"] * 4 + ["sketch"] * 4


def test_by_group_with_iid_and_determinism():
    groups = np.repeat([2, 0, 1], [50, 70, 90])
    labels = np.arange(210) % 5
    a = P.by_group(groups, labels, 3, P.iid, rng(4))
    b = P.by_group(groups, labels, 3, P.iid, rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [c.size for c in a] == [24, 23, 23, 30, 30, 30, 17, 17, 16]
    with pytest.raises(ValueError, match="groups"):
        P.by_group(groups[:-1], labels, 3, P.iid, rng())


# --------------------------------------------------------------------- k_shot
@pytest.mark.parametrize("k", [1, 3, 16])
def test_k_shot_counts_and_subset(k):
    labels = balanced_labels()
    clients = P.dirichlet(labels, 6, 0.3, rng(9))
    shots = P.k_shot(labels, clients, k, rng(10))
    assert_well_formed(shots, labels.size)
    for full, sub in zip(clients, shots):
        assert np.isin(sub, full).all()
        have = np.bincount(labels[full], minlength=10)
        got = np.bincount(labels[sub], minlength=10)
        assert np.array_equal(got, np.minimum(have, k))
    again = P.k_shot(labels, clients, k, rng(10))
    assert all(np.array_equal(x, y) for x, y in zip(shots, again))


# -------------------------------------------------------------- test splits
def check_test_like_train(train_keys, train_idx, test_keys, test_sets):
    """Shared invariants; ``*_keys`` are per-sample (group, class) keys as ints."""
    assert_well_formed(test_sets, test_keys.size)
    assert_disjoint(test_sets)
    n_keys = max(train_keys.max(), test_keys.max()) + 1
    train_counts = np.stack([np.bincount(train_keys[i], minlength=n_keys) for i in train_idx])
    test_counts = np.stack([np.bincount(test_keys[t], minlength=n_keys) for t in test_sets])
    available = np.bincount(test_keys, minlength=n_keys)
    for key in range(n_keys):
        w = train_counts[:, key]
        if w.sum() == 0:
            assert test_counts[:, key].sum() == 0
            continue
        assert test_counts[:, key].sum() == available[key], "test samples left unused"
        assert np.all(test_counts[w == 0, key] == 0), "test class absent from train"
        assert np.all(np.abs(test_counts[:, key] - w * available[key] / w.sum()) < 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_test_like_train_properties(seed):
    train = balanced_labels(num_classes=10, per_class=100, seed=seed)
    test = np.concatenate([balanced_labels(num_classes=9, per_class=23, seed=seed), [9] * 5])
    train_idx = P.dirichlet(train[train != 7], 6, 0.3, rng(seed))  # nobody trains class 7
    train_idx = [np.flatnonzero(train != 7)[i] for i in train_idx]
    test_sets = P.test_like_train(train, train_idx, test, rng(seed + 100), num_classes=10)
    check_test_like_train(train, train_idx, test, test_sets)
    for tr, te in zip(train_idx, test_sets):
        assert set(test[te].tolist()) <= set(train[tr].tolist())
    assert not np.isin(np.flatnonzero(test == 7), np.concatenate(test_sets)).any()
    again = P.test_like_train(train, train_idx, test, rng(seed + 100), num_classes=10)
    assert all(np.array_equal(x, y) for x, y in zip(test_sets, again))


def test_test_like_train_by_group_stays_in_group():
    tr_groups = np.repeat([0, 1], 500)
    tr_labels = np.tile(np.repeat(np.arange(5), 100), 2)
    te_groups = np.repeat([0, 1], 200)
    te_labels = np.tile(np.repeat(np.arange(5), 40), 2)
    train_idx = P.by_group(tr_groups, tr_labels, 3, partial(P.dirichlet, alpha=0.5), rng(1))
    tests = P.test_like_train_by_group(tr_groups, tr_labels, train_idx, te_groups, te_labels, rng(2))
    check_test_like_train(tr_groups * 5 + tr_labels, train_idx, te_groups * 5 + te_labels, tests)
    for k, te in enumerate(tests):
        assert set(te_groups[te].tolist()) == {k // 3}
    assert np.concatenate(tests).size == te_labels.size


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: P.iid(np.arange(10), 0, rng()), "num_clients"),
        (lambda: P.iid(np.arange(10.0), 2, rng()), "labels"),
        (lambda: P.iid(np.zeros((4, 2), int), 2, rng()), "labels"),
        (lambda: P.iid(np.arange(10), 2, 0), "rng"),
        (lambda: P.pathological(np.arange(10), 0, rng()), "num_clients"),
        (lambda: P.dirichlet(np.arange(10), 2, 0.0, rng()), "alpha"),
        (lambda: P.dirichlet(np.arange(10), 2, -1.0, rng()), "alpha"),
        (lambda: P.dirichlet(np.arange(10), 2.5, 1.0, rng()), "num_clients"),
        (lambda: P.by_group(np.zeros(10), np.arange(10), 0, P.iid, rng()), "clients_per_group"),
        (lambda: P.k_shot(np.arange(10), [np.arange(5)], 0, rng()), "k"),
        (lambda: P.k_shot(np.arange(10), [np.array([3, 12])], 1, rng()), "client_indices"),
        (lambda: P.test_like_train(np.arange(4), [np.arange(4)], np.arange(4.0), rng()), "test_labels"),
        (lambda: P.test_like_train(np.arange(4), [np.arange(4)], np.arange(4), rng(), num_classes=3), "num_classes"),
    ],
)
def test_validation_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dirichlet_balance_cap_stops_feeding_full_clients():
    """NIID-bench's cap: once a client holds N / n samples it gets nothing of later classes, so
    no client exceeds N / n by more than one class's share; without the cap, alpha 0.1 gives a
    client far more. The uncapped draw is unchanged by the option's existence."""
    labels = np.repeat(np.arange(10), 100)
    n = 5
    plain = P.dirichlet(labels, n, 0.1, np.random.default_rng(3))
    again = P.dirichlet(labels, n, 0.1, np.random.default_rng(3), balance_cap=False)
    assert all(np.array_equal(a, b) for a, b in zip(plain, again))
    capped = P.dirichlet(labels, n, 0.1, np.random.default_rng(3), balance_cap=True)
    assert sorted(np.concatenate(capped).tolist()) == list(range(labels.size))
    assert max(c.size for c in capped) <= labels.size / n + 100
    assert max(c.size for c in plain) > labels.size / n + 100


def test_test_sets_drawn_from_the_whole_split_follow_the_training_mix():
    """``data.test_from whole``: each client's test counts are its training counts scaled to the
    test size (largest remainder), drawn from all test images of each class (so two clients may
    share images); the share rule's counts follow the class's split among clients instead."""
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(4), 10)
    clients = [
        np.array([0, 1, 2, 3, 10, 11]),  # class 0 x4, class 1 x2
        np.array([4, 20, 21, 22, 23, 24, 25, 26]),
    ]  # class 0 x1, class 2 x7
    test_labels = np.repeat(np.arange(4), 50)
    zeros = np.zeros
    drawn = P.test_drawn_like_train_by_group(
        zeros(40, np.int64), train_labels, clients, zeros(200, np.int64), test_labels, 24, rng
    )
    assert np.bincount(test_labels[drawn[0]], minlength=4).tolist() == [16, 8, 0, 0]
    assert np.bincount(test_labels[drawn[1]], minlength=4).tolist() == [3, 0, 21, 0]
    assert all(np.unique(d).size == d.size for d in drawn)
    shared = P.test_like_train(train_labels, clients, test_labels, np.random.default_rng(0))
    assert np.bincount(test_labels[shared[0]], minlength=4).tolist() == [40, 50, 0, 0]


def test_whole_test_rule_through_the_split():
    from fedmoap.config.sections import DataArgs
    from fedmoap.data.sources import load_source
    from fedmoap.data.split import make_split

    args = DataArgs(source="synthetic", num_clients=3, alpha=0.3, shots=4, max_test_per_client=20, test_from="whole")
    source = load_source(args)
    split = make_split(args, source, seed=0)
    for train, test in zip(split.train, split.test):
        assert len(test) == 20
        mix = np.bincount(source.train_labels[train], minlength=len(source.classnames)) / len(train)
        got = np.bincount(source.test_labels[test], minlength=len(source.classnames)) / len(test)
        assert 0.5 * np.abs(mix - got).sum() <= len(source.classnames) / (2 * 20)


# ---------------------------------------------------------------- class blocks
def test_class_blocks_cut_each_group_in_label_order_with_the_remainder_last():
    labels = np.tile(np.arange(10), 6)
    groups = np.repeat([3, 7], 30)  # two domains, every class in both
    clients = P.class_blocks(labels, 4, groups)
    assert_well_formed(clients, labels.size)
    assert_disjoint(clients)
    assert np.concatenate(clients).size == labels.size
    # m = 10, k = 4: round_half_even(2.5) = 2 blocks, {0..3} and the remainder {4..9}, per domain
    assert [sorted(set(labels[c])) for c in clients] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]] * 2
    assert [set(groups[c]) for c in clients] == [{3}, {3}, {7}, {7}]
    base = np.flatnonzero(labels < 5)  # m = 5, k = 2: 2 blocks, {0, 1} and {2, 3, 4}
    parts = P.class_blocks(labels[base], 2)
    assert [sorted(set(labels[base][c])) for c in parts] == [[0, 1], [2, 3, 4]]
    assert P.block_count(3, 4) == 1 and P.block_count(9, 2) == 4 and P.block_count(11, 4) == 3
    again = P.class_blocks(labels, 4, groups)
    assert all(np.array_equal(a, b) for a, b in zip(clients, again))


def test_class_blocks_through_the_split_check_the_client_count_and_stay_in_their_domain():
    from fedmoap.config.sections import DataArgs
    from fedmoap.data.sources import load_source
    from fedmoap.data.split import make_split
    from fedmoap.errors import FedmoapError

    args = DataArgs(
        source="synthetic",
        domain_column="domain",
        partition="class_blocks",
        classes_per_client=5,
        num_clients=4,
        shots=3,
        max_test_per_client=None,
    )
    source = load_source(args)
    split = make_split(args, source, seed=0)
    for train, test in zip(split.train, split.test):
        assert set(source.train_domains[train]) == set(source.test_domains[test])
        assert len(set(source.train_domains[train])) == 1
        assert set(source.test_labels[test]) <= set(source.train_labels[train])
    assert [sorted(set(source.train_labels[t])) for t in split.train] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] * 2
    with pytest.raises(FedmoapError, match="data.num_clients: class_blocks of 5 classes .* make 4 clients here, not 3"):
        make_split(DataArgs(**{**vars(args), "num_clients": 3}), source, seed=0)
    with pytest.raises(FedmoapError, match="class_blocks needs data.classes_per_client"):
        make_split(DataArgs(**{**vars(args), "classes_per_client": None}), source, seed=0)
    one = make_split(DataArgs(**{**vars(args), "num_clients": 2}), source, seed=0, train_domains=[1])
    assert all(set(source.train_domains[t]) == {1} == set(source.test_domains[s]) for t, s in zip(one.train, one.test))
