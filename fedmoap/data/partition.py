"""Seeded, composable client partitioners over label arrays (pure NumPy).

Every function takes an explicit ``rng: np.random.Generator`` and returns one
index array per client into the given label array, sorted ascending, ``int64``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "PartitionFn",
    "iid",
    "pathological",
    "dirichlet",
    "label_uniform",
    "block_count",
    "class_blocks",
    "by_group",
    "k_shot",
    "test_like_train_by_group",
    "test_drawn_like_train_by_group",
    "test_like_train",
]

PartitionFn = Callable[[np.ndarray, int, np.random.Generator], list[np.ndarray]]


# ----------------------------------------------------------------- validation
def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_indices(indices: Sequence[np.ndarray], n: int, name: str) -> list[np.ndarray]:
    out = []
    for k, idx in enumerate(indices):
        arr = np.asarray(idx)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name}[{k}] must be a 1-D integer array")
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name}[{k}] has indices outside [0, {n})")
        out.append(arr.astype(np.int64))
    return out


def _sorted(idx: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(idx, dtype=np.int64))


# ---------------------------------------------------------------- partitioners
def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all samples and split them into ``num_clients`` near-equal parts
    (sizes differ by at most one)."""
    labels = _check_labels(labels)
    num_clients = _check_int(num_clients, "num_clients", 1)
    _check_rng(rng)
    if labels.size < num_clients:
        raise ValueError(f"labels has {labels.size} samples, fewer than num_clients={num_clients}")
    return [_sorted(part) for part in np.array_split(rng.permutation(labels.size), num_clients)]


def pathological(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, classes_per_client: int | None = None
) -> list[np.ndarray]:
    """Give each client a disjoint set of whole classes.

    Class ids are shuffled with ``rng`` and split evenly over clients
    (``np.array_split``); with ``classes_per_client`` client k gets the k-th
    consecutive block of that many shuffled classes (leftover classes unused).
    """
    labels = _check_labels(labels)
    num_clients = _check_int(num_clients, "num_clients", 1)
    _check_rng(rng)
    classes = np.unique(labels)
    if classes.size < num_clients:
        raise ValueError(
            f"pathological partition needs at least one class per client: labels has "
            f"{classes.size} classes but num_clients={num_clients}"
        )
    classes = rng.permutation(classes)
    if classes_per_client is None:
        chunks = np.array_split(classes, num_clients)
    else:
        cpc = _check_int(classes_per_client, "classes_per_client", 1)
        if num_clients * cpc > classes.size:
            raise ValueError(
                f"classes_per_client={cpc} x num_clients={num_clients} exceeds the {classes.size} classes in labels"
            )
        chunks = [classes[k * cpc : (k + 1) * cpc] for k in range(num_clients)]
    return [_sorted(np.flatnonzero(np.isin(labels, chunk))) for chunk in chunks]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
    max_tries: int = 100,
    balance_cap: bool = False,
) -> list[np.ndarray]:
    """Label-Dirichlet partition (Hsu et al., 2019).

    For every class, draw ``p ~ Dir(alpha * 1_N)`` and cut that class's shuffled
    samples at the cumulative proportions. The whole draw is repeated until every
    client holds at least ``min_size`` samples, at most ``max_tries`` times.
    Small ``alpha`` means skewed clients; large ``alpha`` tends to iid.
    ``balance_cap`` (NIID-bench): a client already holding ``labels.size / num_clients``
    samples gets no share of the classes that follow (the others' shares are renormalised).
    """
    labels = _check_labels(labels)
    num_clients = _check_int(num_clients, "num_clients", 1)
    if not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    min_size = _check_int(min_size, "min_size", 0)
    max_tries = _check_int(max_tries, "max_tries", 1)
    _check_rng(rng)
    if num_clients * min_size > labels.size:
        raise ValueError(
            f"cannot give {num_clients} clients min_size={min_size} samples each from only {labels.size} samples"
        )
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            if balance_cap:
                held = np.array([sum(c.size for c in part) for part in parts])
                capped = p * (held < labels.size / num_clients)
                p = capped / capped.sum() if capped.sum() > 0 else p
            cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        clients = [_sorted(np.concatenate(p)) for p in parts]
        if min(c.size for c in clients) >= min_size:
            return clients
    raise ValueError(
        f"dirichlet partition could not give every client >= {min_size} samples in "
        f"{max_tries} tries (alpha={alpha}, num_clients={num_clients}); use a larger "
        f"alpha, fewer clients, or a smaller min_size"
    )


def label_uniform(
    labels: np.ndarray,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
    share: tuple[float, float] = (0.4, 0.6),
    max_tries: int = 100,
) -> list[np.ndarray]:
    """SGPT's "noniid-labeluni" label split (Deng et al., CVPR 2024).

    Every class is held by the same number of clients, ``num_clients * classes_per_client / C``
    (must be whole). Clients in turn take ``classes_per_client`` distinct classes, each among
    the classes with the most free slots (ties at random; the whole draw is repeated if a client
    is left with only classes it holds). Each class's shuffled samples are then cut among its
    holders in proportions drawn from U(``share``), normalised (all samples are used; SGPT drops
    the rounding remainder).
    """
    labels = _check_labels(labels)
    num_clients = _check_int(num_clients, "num_clients", 1)
    k = _check_int(classes_per_client, "classes_per_client", 1)
    _check_rng(rng)
    classes = np.unique(labels)
    if k > classes.size or (num_clients * k) % classes.size:
        raise ValueError(
            f"label_uniform needs classes_per_client={k} <= {classes.size} classes and "
            f"num_clients x classes_per_client ({num_clients * k}) divisible by them"
        )
    per_class = num_clients * k // classes.size
    for _ in range(max_tries):
        free = dict.fromkeys(classes.tolist(), per_class)
        held: list[list[int]] = []
        for _client in range(num_clients):
            mine: list[int] = []
            for _slot in range(k):
                options = [c for c, f in free.items() if f > 0 and c not in mine]
                if not options:
                    break
                top = max(free[c] for c in options)
                pick = int(rng.choice([c for c in options if free[c] == top]))
                free[pick] -= 1
                mine.append(pick)
            held.append(mine)
        if all(len(m) == k for m in held):
            break
    else:
        raise ValueError(
            f"label_uniform could not give {num_clients} clients {k} distinct classes in {max_tries} tries"
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in classes.tolist():
        holders = [i for i, m in enumerate(held) if c in m]
        p = rng.uniform(*share, size=len(holders))
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(p / p.sum())[:-1] * idx.size).astype(np.int64)
        for i, chunk in zip(holders, np.split(idx, cuts)):
            parts[i].append(chunk)
    return [_sorted(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


def block_count(num_classes: int, classes_per_client: int) -> int:
    """Clients of :func:`class_blocks` for a group of ``num_classes`` classes:
    ``max(1, round_half_even(num_classes / classes_per_client))`` (FedTPG's count)."""
    return max(1, round(num_classes / classes_per_client))


def class_blocks(labels: np.ndarray, classes_per_client: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """FedTPG's class-block partition: per group (e.g. domain; one group if ``groups`` is None),
    the m classes present in label order are cut into :func:`block_count` contiguous blocks of
    ``classes_per_client``, the last block taking the remainder; a client holds every sample of
    its block's classes in its group. Groups are visited in sorted order, clients group-major.
    Deterministic (no draw)."""
    labels = _check_labels(labels)
    k = _check_int(classes_per_client, "classes_per_client", 1)
    groups = np.zeros(labels.size, np.int64) if groups is None else np.asarray(groups)
    if groups.ndim != 1 or groups.shape != labels.shape:
        raise ValueError(f"groups must be 1-D with the same length as labels ({labels.size}), got shape {groups.shape}")
    clients = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        classes = np.unique(labels[members])
        n = block_count(classes.size, k)
        for i in range(n):
            block = classes[i * k : (i + 1) * k] if i < n - 1 else classes[i * k :]
            clients.append(_sorted(members[np.isin(labels[members], block)]))
    return clients


def by_group(
    groups: np.ndarray, labels: np.ndarray, clients_per_group: int, partition_fn: PartitionFn, rng: np.random.Generator
) -> list[np.ndarray]:
    """Partition each group (e.g. domain) separately into ``clients_per_group``
    clients with ``partition_fn(group_labels, clients_per_group, rng=rng)``.

    Groups are visited in sorted order and clients are returned group-major.
    ``rng`` is passed by keyword so ``functools.partial(dirichlet, alpha=0.5)``
    works even though ``alpha`` precedes ``rng`` in ``dirichlet``'s signature.
    """
    labels = _check_labels(labels)
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape != labels.shape:
        raise ValueError(f"groups must be 1-D with the same length as labels ({labels.size}), got shape {groups.shape}")
    clients_per_group = _check_int(clients_per_group, "clients_per_group", 1)
    if not callable(partition_fn):
        raise ValueError("partition_fn must be callable")
    _check_rng(rng)
    clients = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        local = partition_fn(labels[members], clients_per_group, rng=rng)
        clients.extend(_sorted(members[np.asarray(part, dtype=np.int64)]) for part in local)
    return clients


def k_shot(labels: np.ndarray, client_indices: list[np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Keep, per client and per class, ``min(k, available)`` samples drawn at
    random without replacement."""
    labels = _check_labels(labels)
    client_indices = _check_indices(client_indices, labels.size, "client_indices")
    k = _check_int(k, "k", 1)
    _check_rng(rng)
    out = []
    for idx in client_indices:
        keep = []
        for c in np.unique(labels[idx]):
            members = idx[labels[idx] == c]
            keep.append(rng.choice(members, k, replace=False) if members.size > k else members)
        out.append(_sorted(np.concatenate(keep)) if keep else np.empty(0, np.int64))
    return out


# -------------------------------------------------------------- test splits
def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``weights`` summing to ``total``
    (exact integer arithmetic; ties go to the lower client index)."""
    w_sum = int(weights.sum())
    floor, rem = np.divmod(weights * total, w_sum)
    order = np.argsort(-rem, kind="stable")
    floor[order[: total - int(floor.sum())]] += 1
    return floor


def test_like_train_by_group(
    train_groups: np.ndarray,
    train_labels: np.ndarray,
    train_indices: list[np.ndarray],
    test_groups: np.ndarray,
    test_labels: np.ndarray,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Split the test set so each client's test data mirrors its training data
    per (group, class), using every test sample at most once.

    For each (group, class) key, its shuffled test samples are shared among the
    clients in proportion to their training counts of that key (largest
    remainder, so all are used); keys no client trains on are left unused.
    """
    train_labels = _check_labels(train_labels, "train_labels")
    test_labels = _check_labels(test_labels, "test_labels")
    train_groups, test_groups = np.asarray(train_groups), np.asarray(test_groups)
    for name, g, lab in (("train_groups", train_groups, train_labels), ("test_groups", test_groups, test_labels)):
        if g.shape != lab.shape:
            raise ValueError(f"{name} must have shape ({lab.size},) like its labels, got {g.shape}")
    train_indices = _check_indices(train_indices, train_labels.size, "train_indices")
    if not train_indices:
        raise ValueError("train_indices must contain at least one client")
    _check_rng(rng)
    # Encode (group, class) pairs of train and test jointly as integer keys.
    _, g_code = np.unique(np.concatenate([train_groups, test_groups]), return_inverse=True)
    pairs = np.stack([g_code, np.concatenate([train_labels, test_labels])], axis=1)
    keys, key_id = np.unique(pairs, axis=0, return_inverse=True)
    key_id = key_id.reshape(-1)
    train_key, test_key = key_id[: train_labels.size], key_id[train_labels.size :]
    counts = np.stack([np.bincount(train_key[idx], minlength=len(keys)) for idx in train_indices])
    parts: list[list[np.ndarray]] = [[] for _ in train_indices]
    for key in range(len(keys)):
        members = np.flatnonzero(test_key == key)
        if members.size == 0 or counts[:, key].sum() == 0:
            continue
        shares = _largest_remainder(counts[:, key], members.size)
        for c, chunk in enumerate(np.split(rng.permutation(members), np.cumsum(shares)[:-1])):
            parts[c].append(chunk)
    return [_sorted(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]


def test_drawn_like_train_by_group(
    train_groups: np.ndarray,
    train_labels: np.ndarray,
    train_indices: list[np.ndarray],
    test_groups: np.ndarray,
    test_labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Each client's test set drawn from the whole test split (clients may share test images):
    ``size`` images whose (group, class) counts are the client's training counts scaled to
    ``size`` (largest remainder), each key's images drawn without replacement from all test
    images of that key; a key with fewer test images than its share gives all it has."""
    train_labels = _check_labels(train_labels, "train_labels")
    test_labels = _check_labels(test_labels, "test_labels")
    size = _check_int(size, "size", 1)
    train_indices = _check_indices(train_indices, train_labels.size, "train_indices")
    _check_rng(rng)
    _, g_code = np.unique(np.concatenate([np.asarray(train_groups), np.asarray(test_groups)]), return_inverse=True)
    pairs = np.stack([g_code.reshape(-1), np.concatenate([train_labels, test_labels])], axis=1)
    keys, key_id = np.unique(pairs, axis=0, return_inverse=True)
    key_id = key_id.reshape(-1)
    train_key, test_key = key_id[: train_labels.size], key_id[train_labels.size :]
    members = [np.flatnonzero(test_key == k) for k in range(len(keys))]
    out = []
    for idx in train_indices:
        counts = np.bincount(train_key[idx], minlength=len(keys))
        shares = _largest_remainder(counts, size) if counts.sum() else counts
        chunks = [rng.permutation(members[k])[: shares[k]] for k in np.flatnonzero(shares)]
        out.append(_sorted(np.concatenate(chunks)) if chunks else np.empty(0, np.int64))
    return out


def test_like_train(
    train_labels: np.ndarray,
    train_indices: list[np.ndarray],
    test_labels: np.ndarray,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Single-group case of :func:`test_like_train_by_group`. ``num_classes``,
    if given, only checks that every label lies in ``[0, num_classes)``."""
    train_labels = _check_labels(train_labels, "train_labels")
    test_labels = _check_labels(test_labels, "test_labels")
    if num_classes is not None:
        num_classes = _check_int(num_classes, "num_classes", 1)
        for name, lab in (("train_labels", train_labels), ("test_labels", test_labels)):
            if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
                raise ValueError(f"{name} must lie in [0, num_classes={num_classes})")
    return test_like_train_by_group(
        np.zeros(train_labels.size, np.int64),
        train_labels,
        train_indices,
        np.zeros(test_labels.size, np.int64),
        test_labels,
        rng,
    )
