"""Where a run's images come from: generated, packaged, local files, a reference layout
(``coop:``, ``fedbn-domainnet:``, ``fedbn-office:``; :mod:`fedmoap.data.layouts`) or the
Hugging Face hub.

Every source ends as two ``datasets.Dataset`` splits with an image column, an integer label
column, class names and a stable id per split (the feature-cache key part for the data). A
dataset whose schema differs from what the config says (a split or column missing, an image
column that is not ``datasets.Image``, a label column that is not a class label, splits that
disagree on a column's type) stops the run with one line naming the culprit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value, load_dataset, load_from_disk

from fedmoap.config.sections import DataArgs
from fedmoap.data.layouts import LAYOUTS
from fedmoap.errors import FedmoapError

__all__ = ["SourceData", "load_source"]


@dataclass
class SourceData:
    """The two splits of a run's dataset, with labels and domains as arrays."""

    train: Dataset
    test: Dataset
    classnames: list[str]
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_domains: np.ndarray | None
    test_domains: np.ndarray | None
    train_id: str
    test_id: str
    domain_names: list[str] | None = None
    """Domain names (``data.domain_column``'s distinct values, sorted); code i is
    ``domain_names[i]``."""


def load_source(args: DataArgs) -> SourceData:
    """Load ``args.source`` and check it against the config (columns, class count)."""
    splits, data_id = _open(args)
    for split in (args.train_split, args.test_split):
        if split not in splits:
            raise FedmoapError(f"data: dataset {args.source!r} has no split {split!r} (it has {sorted(splits)})")
    train, test = splits[args.train_split], splits[args.test_split]
    for column in (args.image_column, args.label_column, args.domain_column):
        if column is not None and (column not in train.column_names or column not in test.column_names):
            raise FedmoapError(
                f"data: column {column!r} is missing from dataset {args.source!r} (columns: {train.column_names})"
            )
    _check_features(args, train, test)
    classnames = _classnames(args, train)
    train_labels, test_labels, classnames = _labels(args, train, test, classnames)
    top = int(max(train_labels.max(initial=-1), test_labels.max(initial=-1)))
    for name, labels in ((args.train_split, train_labels), (args.test_split, test_labels)):
        negative = labels < 0
        if negative.any():  # datasets' ClassLabel writes -1 for a missing label
            raise FedmoapError(
                f"data.label_column {args.label_column!r} holds negative labels in split {name!r} "
                f"({int(negative.sum())} rows, e.g. row {int(np.flatnonzero(negative)[0])}: "
                f"{int(labels[negative][0])}); labels must be class indices 0..{len(classnames) - 1}"
            )
    if top >= len(classnames):
        raise FedmoapError(
            f"data: class-count mismatch: labels go up to {top} but there are {len(classnames)} class names"
        )
    domains, domain_names = [None, None], None
    if args.domain_column:
        # codes over the union of both splits, so a domain has the same code in train and test
        values = [_column(s, args.domain_column) for s in (train, test)]
        names = np.unique(np.concatenate(values))
        domains = [np.searchsorted(names, v) for v in values]
        domain_names = [str(d) for d in names]
        missing = sorted(str(d) for d in set(names[np.unique(domains[0])]) - set(names[np.unique(domains[1])]))
        if missing:
            raise FedmoapError(
                f"data.domain_column: domains {missing} have training samples but no "
                f"test samples in split {args.test_split!r}"
            )
    return SourceData(
        train,
        test,
        classnames,
        train_labels,
        test_labels,
        domains[0],
        domains[1],
        f"{data_id or train._fingerprint}/{args.train_split}",
        f"{data_id or test._fingerprint}/{args.test_split}",
        domain_names,
    )


def _labels(
    args: DataArgs, train: Dataset, test: Dataset, classnames: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Integer label arrays of both splits. String labels are mapped through the class names
    (given, or the sorted distinct strings); float labels must be whole numbers."""
    raw = [_column(s, args.label_column) for s in (train, test)]
    column = f"data.label_column {args.label_column!r}"
    if any(r.dtype.kind in "USO" for r in raw):
        strings = [r.astype(str) for r in raw]
        if classnames is None:
            classnames = sorted(set(strings[0]) | set(strings[1]))
        index = {name: i for i, name in enumerate(args.classnames or classnames)}
        unknown = sorted((set(strings[0]) | set(strings[1])) - set(index))
        if unknown:
            raise FedmoapError(f"{column} holds labels {unknown[:5]} that are not in data.classnames")
        return (*[np.array([index[v] for v in r], dtype=np.int64) for r in strings], classnames)
    for r in raw:
        if r.dtype.kind == "f" and not np.all(np.mod(r, 1) == 0):
            raise FedmoapError(
                f"{column} holds non-integer labels (e.g. {r[np.mod(r, 1) != 0][0]}); labels must be class indices"
            )
        if r.dtype.kind not in "iuf" and r.size:
            raise FedmoapError(f"{column} holds {r.dtype} values, not class indices")
    if classnames is None:
        raise FedmoapError(
            f"data.classnames: column {args.label_column!r} has no class names; list them in data.classnames"
        )
    return (*[r.astype(np.int64) for r in raw], classnames)


def _column(ds: Dataset, name: str) -> np.ndarray:
    """One column as an array, read through Arrow (strings as ``str`` dtype); iterating the
    ``datasets`` column row by row takes seconds on 50,000 rows."""
    values = ds.select_columns([name]).with_format("arrow")[:][name].to_numpy(zero_copy_only=False)
    strings = values.dtype == object and values.size and isinstance(values[0], str)
    return values.astype(str) if strings else values


_LABEL_VALUES = re.compile(r"u?int\d+|float\d+|string|large_string")
_WANT = {
    "image": "an image column (datasets.Image)",
    "label": "a class label (ClassLabel, integer or string)",
    "domain": "one value per sample (ClassLabel, integer or string)",
}


def _check_features(args: DataArgs, train: Dataset, test: Dataset) -> None:
    """The feature types of the configured columns: an image column, a class-label column, a
    scalar domain column, each of the same type in both splits."""
    for column, role in ((args.image_column, "image"), (args.label_column, "label"), (args.domain_column, "domain")):
        if column is None:
            continue
        key = f"data.{role}_column {column!r}"
        types = [s.features.get(column) for s in (train, test)]
        for feature in (f for f in types if f is not None):
            value = isinstance(feature, Value)
            label = value and _LABEL_VALUES.fullmatch(feature.dtype) is not None
            ok = {
                "image": isinstance(feature, Image),
                "label": isinstance(feature, ClassLabel) or label,
                "domain": isinstance(feature, ClassLabel) or value,
            }[role]
            if not ok:
                raise FedmoapError(f"{key} of dataset {args.source!r} is {_describe(feature)}, not {_WANT[role]}")
        if None not in types and types[0] != types[1]:
            raise FedmoapError(
                f"{key}: splits {args.train_split!r} and {args.test_split!r} of dataset "
                f"{args.source!r} disagree on its type ({_describe(types[0])} vs "
                f"{_describe(types[1])})"
            )


def _describe(feature: object) -> str:
    if isinstance(feature, ClassLabel):
        names = ", ".join(feature.names[:3]) + (", ..." if feature.num_classes > 3 else "")
        return f"ClassLabel({feature.num_classes} names: {names})"
    if isinstance(feature, Value):
        return f"Value({feature.dtype!r})"
    return type(feature).__name__


def _open(args: DataArgs) -> tuple[DatasetDict, str | None]:
    src = args.source
    scheme, colon, rest = src.partition(":")
    if colon and scheme in LAYOUTS:
        return LAYOUTS[scheme](rest)
    if colon and re.fullmatch(r"[a-z][a-z0-9-]+", scheme) and not Path(src).expanduser().exists():
        raise FedmoapError(
            f"data.source: unknown layout {scheme + ':'!r} in {src!r} (known: {', '.join(k + ':' for k in LAYOUTS)})"
        )
    if src == "synthetic":
        from fedmoap.data.synthetic import make_synthetic, synthetic_id

        return make_synthetic(), synthetic_id()
    if src == "fashion-mnist":
        from fedmoap.data.fashion_mnist import load_fashion_mnist_with_id

        return load_fashion_mnist_with_id(args.path)
    if src == "fashion-mnist-styles":  # five rendering styles as a domain column
        from fedmoap.data.fashion_mnist_styles import load_fashion_mnist_styles

        return load_fashion_mnist_styles(args.path)
    path = Path(src).expanduser()
    try:
        with _held_logs("datasets"):
            if path.is_dir():
                if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                    loaded = load_from_disk(str(path))
                    return (loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)), None
                parquet = sorted(path.rglob("*.parquet"))
                if parquet:
                    files = {s: [str(p) for p in parquet if s in p.stem] for s in (args.train_split, args.test_split)}
                    return load_dataset("parquet", data_files={k: v for k, v in files.items() if v}), None
                return load_dataset("imagefolder", data_dir=str(path)), None
            if src.startswith((".", "/", "~")) or (Path(src).parent != Path(".") and not _looks_like_hub(src)):
                raise FedmoapError(f"data.source: no dataset directory at {src!r}")
            return load_dataset(src, cache_dir=None), None
    except FedmoapError:
        raise
    except Exception as exc:  # datasets raises many kinds for a missing or unreachable dataset
        raise FedmoapError(f"data.source: cannot load dataset {src!r}: {exc}") from exc


@contextmanager
def _held_logs(name: str) -> Iterator[None]:
    """Hold back what the ``name`` library logs inside the block; pass it on only if the block
    succeeds. (``datasets`` logs a failed read at ERROR before raising, and that exception is
    reported in one line of its own.)"""
    logger = logging.getLogger(name)
    held: list[logging.LogRecord] = []
    hold = logging.Handler()
    hold.emit = held.append  # type: ignore[method-assign]
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [hold], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
    for record in held:
        logger.handle(record)


def _looks_like_hub(src: str) -> bool:
    parts = src.split("/")
    return len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def _classnames(args: DataArgs, train: Dataset) -> list[str] | None:
    feature = train.features.get(args.label_column)
    names = feature.names if isinstance(feature, ClassLabel) else None
    if args.classnames is not None:
        if names is not None and len(names) != len(args.classnames):
            raise FedmoapError(
                f"data.classnames: class-count mismatch: {len(args.classnames)} names "
                f"given but the dataset has {len(names)} classes"
            )
        return [n.replace("_", " ") for n in args.classnames]
    return None if names is None else [n.replace("_", " ") for n in names]
