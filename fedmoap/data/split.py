"""The client split of a run: which training and test samples each client holds.

Built from the run seed by the partitioners in :mod:`fedmoap.data.partition`, written to
``split.json`` in the run directory, and loadable by another run (``data.split_file``) so that
methods are compared on identical splits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from fedmoap.config.sections import DataArgs
from fedmoap.data import partition as P
from fedmoap.data.sources import SourceData
from fedmoap.errors import FedmoapError
from fedmoap.seeding import numpy_rng

__all__ = ["SPLIT_FORMAT", "EXTRA_KEYS", "ClientSplit", "make_split", "load_split"]

SPLIT_FORMAT = 1
EXTRA_KEYS = ("classes", "unseen_clients", "eval_sets", "domains")
"""Optional split-file sections the evaluation modes add (:mod:`fedmoap.federation.evaluation`): the
base/novel class split, the held-out clients, the pooled test sets, the domain protocol (its
mode, source and target domains)."""


@dataclass
class ClientSplit:
    """Per-client indices into the train and test splits."""

    train: list[np.ndarray]
    test: list[np.ndarray]
    train_id: str
    test_id: str
    extra: dict = field(default_factory=dict)
    """The :data:`EXTRA_KEYS` sections present (plain JSON data), written after ``clients``."""

    @property
    def num_clients(self) -> int:
        return len(self.train)

    @property
    def eval_sets(self) -> dict[str, np.ndarray]:
        """Pooled test sets of the evaluation modes (name -> test-split row indices)."""
        return {k: np.asarray(v, dtype=np.int64) for k, v in self.extra.get("eval_sets", {}).items()}

    def to_json(self) -> dict:
        return {
            "format": SPLIT_FORMAT,
            "train_id": self.train_id,
            "test_id": self.test_id,
            "clients": [
                {"id": i, "train": tr.tolist(), "test": te.tolist()}
                for i, (tr, te) in enumerate(zip(self.train, self.test))
            ],
            **{k: self.extra[k] for k in EXTRA_KEYS if k in self.extra},
        }

    def save(self, path: Path) -> None:
        from fedmoap.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json()))


def make_split(
    args: DataArgs,
    data: SourceData,
    seed: int,
    train_classes: list[int] | None = None,
    train_domains: list[int] | None = None,
) -> ClientSplit:
    """The split a config asks for: from ``args.split_file`` if given, else drawn from ``seed``.
    ``train_classes`` (base-to-novel) and ``train_domains`` (domain codes; the generalisation
    protocols' source domains): only samples of these classes and domains are partitioned, so no
    client trains on (or is locally tested on) another; with ``train_domains`` each client's test
    set comes from its own domains."""
    if args.split_file:
        return load_split(Path(args.split_file), data, args.num_clients)
    rng = numpy_rng(seed, "split")
    try:
        if train_classes is None and train_domains is None:
            train = _partition(args, data, rng)
        else:
            keep = np.ones(len(data.train_labels), bool)
            if train_classes is not None:
                keep &= np.isin(data.train_labels, train_classes)
            if train_domains is not None:
                keep &= np.isin(data.train_domains, train_domains)
            keep = np.flatnonzero(keep)
            domains = None if data.train_domains is None else data.train_domains[keep]
            subset = replace(data, train_labels=data.train_labels[keep], train_domains=domains)
            train = [keep[idx] for idx in _partition(args, subset, rng)]
        full_train = train
        if args.shots is not None:
            train = P.k_shot(data.train_labels, train, args.shots, rng)
        mix = train if args.test_follows == "train" else full_train
        by_domain = data.train_domains is not None and (
            args.partition in ("domain_dirichlet", "class_blocks") or train_domains is not None
        )
        groups = (
            (data.train_domains, data.test_domains)
            if by_domain
            else (np.zeros(data.train_labels.size, np.int64), np.zeros(data.test_labels.size, np.int64))
        )
        if args.test_from == "whole":
            test = P.test_drawn_like_train_by_group(
                groups[0], data.train_labels, mix, groups[1], data.test_labels, args.max_test_per_client, rng
            )
        elif by_domain:
            test = P.test_like_train_by_group(
                data.train_domains, data.train_labels, mix, data.test_domains, data.test_labels, rng
            )
        else:
            test = P.test_like_train(data.train_labels, mix, data.test_labels, rng)
    except ValueError as exc:
        raise FedmoapError(f"data: cannot split {args.source!r} into {args.num_clients} clients: {exc}") from exc
    if args.max_test_per_client is not None and args.test_from == "share":
        test = [np.sort(rng.permutation(t)[: args.max_test_per_client]) for t in test]
    empty = [i for i, t in enumerate(train) if len(t) == 0]
    if empty:
        raise FedmoapError(f"data: clients {empty} get no training samples; use fewer clients")
    empty = [i for i, t in enumerate(test) if len(t) == 0]
    if empty:
        raise FedmoapError(
            f"data: clients {empty} get no test samples (the test split has none of "
            "their classes); use fewer clients or another partition"
        )
    return ClientSplit(train, test, data.train_id, data.test_id)


def _partition(args: DataArgs, data: SourceData, rng: np.random.Generator) -> list[np.ndarray]:
    labels, n = data.train_labels, args.num_clients
    if args.partition == "iid":
        return P.iid(labels, n, rng)
    if args.partition == "pathological":
        return P.pathological(labels, n, rng, args.classes_per_client)
    if args.partition == "dirichlet":
        return P.dirichlet(labels, n, args.alpha, rng, balance_cap=args.balance_cap)
    if args.partition in ("label_uniform", "class_blocks") and args.classes_per_client is None:
        raise FedmoapError(f"data.partition {args.partition} needs data.classes_per_client")
    if args.partition == "label_uniform":
        return P.label_uniform(labels, n, args.classes_per_client, rng)
    if args.partition == "class_blocks":
        parts = P.class_blocks(labels, args.classes_per_client, data.train_domains)
        if len(parts) != n:
            raise FedmoapError(
                f"data.num_clients: class_blocks of {args.classes_per_client} classes "
                f"(data.classes_per_client) make {len(parts)} clients here, not {n}; "
                f"set data.num_clients {len(parts)}"
            )
        return parts
    if data.train_domains is None:
        raise FedmoapError("data.partition: domain_dirichlet needs data.domain_column")
    num_domains = len(np.unique(data.train_domains))
    if n % num_domains:
        raise FedmoapError(f"data.num_clients: {n} clients cannot be spread evenly over {num_domains} domains")
    return P.by_group(
        data.train_domains,
        labels,
        n // num_domains,
        partial(P.dirichlet, alpha=args.alpha, balance_cap=args.balance_cap),
        rng,
    )


def load_split(path: Path, data: SourceData, num_clients: int, key: str = "data.split_file") -> ClientSplit:
    """Read a ``split.json`` and check that it fits this dataset and client count; ``key`` names
    where the file came from in errors (``run_dir`` for a resumed run's own split)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FedmoapError(f"{key}: {path} does not exist") from None
    except IsADirectoryError:
        raise FedmoapError(f"{key}: {path} is a directory, not a split file") from None
    except OSError as exc:
        raise FedmoapError(f"{key}: {path} cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise FedmoapError(f"{key}: {path} is not a valid split file ({exc})") from None
    problem = _shape_problem(raw)
    if problem:
        raise FedmoapError(f"{key}: {path} is not a valid split file ({problem})")
    clients = raw["clients"]
    train = [np.asarray(c["train"], dtype=np.int64).reshape(-1) for c in clients]
    test = [np.asarray(c["test"], dtype=np.int64).reshape(-1) for c in clients]
    extra = {k: raw[k] for k in EXTRA_KEYS if k in raw}
    if len(train) != num_clients:
        raise FedmoapError(f"{key}: {path} has {len(train)} clients, data.num_clients is {num_clients}")
    empty = [i for i, t in enumerate(train) if len(t) == 0]
    if empty:
        raise FedmoapError(f"{key}: {path} gives clients {empty} no training samples")
    empty = [i for i, t in enumerate(test) if len(t) == 0]
    if empty:  # as a drawn split is refused: their accuracy would be NaN
        raise FedmoapError(f"{key}: {path} gives clients {empty} no test samples")
    for name, idx, n in (("train", train, len(data.train_labels)), ("test", test, len(data.test_labels))):
        if any(len(i) and (i.min() < 0 or i.max() >= n) for i in idx):
            raise FedmoapError(f"{key}: {path} indexes {name} samples beyond the {n} of this dataset")
    pooled = [r for rows in extra.get("eval_sets", {}).values() for r in rows]
    if pooled and (min(pooled) < 0 or max(pooled) >= len(data.test_labels)):
        raise FedmoapError(
            f"{key}: {path} indexes test samples beyond the {len(data.test_labels)} of this dataset in 'eval_sets'"
        )
    if (raw.get("train_id"), raw.get("test_id")) != (data.train_id, data.test_id):
        raise FedmoapError(f"{key}: {path} was made for another dataset ({raw.get('train_id')}, not {data.train_id})")
    return ClientSplit(train, test, data.train_id, data.test_id, extra)


def _ints(value: object) -> bool:
    """A list of integers that fit int64."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 for v in value
    )


def _shape_problem(raw: object) -> str | None:
    """What is wrong with the structure of a parsed split file, or None."""
    if not isinstance(raw, dict):
        return f"a JSON {type(raw).__name__}, not an object"
    clients = raw.get("clients")
    if not isinstance(clients, list):
        return "'clients' is not a list"
    for i, c in enumerate(clients):
        if not isinstance(c, dict) or not _ints(c.get("train")) or not _ints(c.get("test")):
            return f"client {i} is not an object with integer lists 'train' and 'test'"
        if c.get("id", i) != i or isinstance(c.get("id"), bool):
            return f"client {i} has id {c['id']!r} (clients are listed in id order 0, 1, ...)"
    classes = raw.get("classes", {})
    if not isinstance(classes, dict) or not all(_ints(classes.get(k, [])) for k in ("base", "novel")):
        return "'classes' is not an object with integer lists 'base' and 'novel'"
    if not _ints(raw.get("unseen_clients", [])):
        return "'unseen_clients' is not a list of client ids"
    sets = raw.get("eval_sets", {})
    if not isinstance(sets, dict) or not all(_ints(v) for v in sets.values()):
        return "'eval_sets' is not an object of integer lists"
    domains = raw.get("domains", {"source": [], "target": []})
    lists = isinstance(domains, dict) and [domains.get(k) for k in ("source", "target")]
    if not lists or not all(isinstance(v, list) and all(isinstance(d, str) for d in v) for v in lists):
        return "'domains' is not an object with string lists 'source' and 'target'"
    return None
