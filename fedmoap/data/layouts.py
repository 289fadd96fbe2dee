"""The on-disk layouts the paper's reference code reads, opened as ``datasets.DatasetDict``.

``data.source`` is a prefix naming the layout, then a path: ``coop:/data/oxford_flowers`` (CoOp's
split files: Flowers102, OxfordPets, Food101, Caltech101, DTD of pFedMoAP's Table 1),
``fedbn-domainnet:/data`` and ``fedbn-office:/data`` (FedBN's DomainNet subset and
Office-Caltech10, Tables 2 and 4). Each loader checks the layout (split files present and well
formed, every listed image present) and stops with one :class:`FedmoapError` line naming the
culprit. Images are decoded lazily (the ``image`` column holds paths). The id returned with the
splits keys the feature cache and ``split.json``: it hashes the split files, the image folder's
name and the byte sizes of a sample of the images, not absolute paths, so a copy of the dataset
elsewhere (a node's scratch disk) keeps its cached features, while a resized copy does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from fedmoap.errors import FedmoapError

__all__ = [
    "LAYOUT_FORMAT",
    "COOP_IMAGE_DIRS",
    "COOP_SIZES",
    "COOP_SPLITS",
    "load_coop",
    "FedbnLayout",
    "FEDBN",
    "load_fedbn",
    "LAYOUTS",
]

LAYOUT_FORMAT = 1
"""Part of every id: bump when a loader's output changes for the same files."""

# ------------------------------------------------------------------------------------------ CoOp

COOP_IMAGE_DIRS = {
    "OxfordFlowers": "jpg",
    "OxfordPets": "images",
    "Food101": "images",
    "Caltech101": "101_ObjectCategories",
    "DescribableTextures": "images",
}
"""Image folder of each dataset, next to its ``split_zhou_<Name>.json`` (CoOp ``datasets/*.py``).
Other CoOp split files work too: their image folder is found by looking for the first listed
image in the dataset folder and its sub-folders."""
COOP_SIZES = {
    "OxfordFlowers": (4093, 1633, 2463),
    "OxfordPets": (2944, 736, 3669),
    "Food101": (50500, 20200, 30300),
    "Caltech101": (4128, 1649, 2465),
    "DescribableTextures": (2820, 1128, 1692),
}
"""train/val/test sizes of CoOp's split files (CoOp's dataset table; train and test are
pFedMoAP's Table 5). A split file of another size loads with a warning."""
COOP_SPLITS = ("train", "val", "test")


def load_coop(location: str) -> tuple[DatasetDict, str]:
    """A dataset in CoOp's layout (CoOp ``DATASETS.md``), e.g. ``coop:/data/oxford_flowers``::

        oxford_flowers/
        |-- jpg/                          the images
        |-- split_zhou_OxfordFlowers.json {"train": [[path, label, classname], ...],
                                           "val": [...], "test": [...]}

    ``location`` is the dataset folder (holding exactly one ``split_zhou_*.json``) or the split
    file itself. Paths in the split file are relative to the image folder (``jpg/`` for
    Flowers102, ``images/`` for OxfordPets, Food101 and DTD, ``101_ObjectCategories/`` for
    Caltech101). Splits ``train``, ``val``, ``test``; columns ``image`` (``datasets.Image``)
    and ``label`` (``ClassLabel`` whose names are the split file's class names in label order:
    Flowers' ``cat_to_name`` names, Caltech101's renamed ``face``/``leopard``/..., etc.).
    """
    split_file = _coop_split_file(Path(location).expanduser())
    name = split_file.stem.removeprefix("split_zhou_")
    items = _read_coop_split(split_file)
    classnames = _coop_classnames(split_file, items)
    image_dir = _coop_image_dir(split_file, name, items)
    for split in COOP_SPLITS:
        _check_present(image_dir, [path for path, _, _ in items[split]], f"{split_file.name} ({split})")
    sizes = tuple(len(items[s]) for s in COOP_SPLITS)
    if name in COOP_SIZES and sizes != COOP_SIZES[name]:
        _warn(
            f"{split_file} has {'/'.join(map(str, sizes))} train/val/test images; CoOp's "
            f"{split_file.name} has {'/'.join(f'{n:,}' for n in COOP_SIZES[name])}"
        )
    features = Features({"image": Image(), "label": ClassLabel(names=classnames)})
    columns = {
        split: {
            "image": [os.path.join(image_dir, p) for p, _, _ in items[split]],
            "label": [y for _, y, _ in items[split]],
        }
        for split in COOP_SPLITS
    }
    splits = DatasetDict({s: Dataset.from_dict(c, features=features) for s, c in columns.items()})
    images = [p for c in columns.values() for p in c["image"]]
    return splits, _data_id("coop", [split_file], os.path.relpath(image_dir, split_file.parent), images)


def _coop_split_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FedmoapError(f"data.source: coop: no dataset folder or split file at {str(path)!r}")
    found = sorted(path.glob("split_zhou_*.json"))
    if len(found) != 1:
        what = f"{len(found)} split files ({', '.join(p.name for p in found)})" if found else "no split_zhou_*.json"
        raise FedmoapError(
            f"data.source: coop: {path} holds {what}; point data.source at one "
            "dataset folder of CoOp's layout or at its split_zhou_<Name>.json"
        )
    return found[0]


def _read_coop_split(path: Path) -> dict[str, list[tuple[str, int, str]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FedmoapError(f"data.source: coop: cannot read {path} as JSON ({' '.join(str(exc).split())})") from None
    missing = [s for s in COOP_SPLITS if not isinstance(data, dict) or s not in data]
    if missing:
        raise FedmoapError(
            f"data.source: coop: {path} is not a CoOp split file: it has no "
            f"{' / '.join(map(repr, missing))} list (expected an object with lists "
            "'train', 'val' and 'test' of [image path, label, class name])"
        )
    items = {}
    for split in COOP_SPLITS:
        entries = data[split]
        if not isinstance(entries, list):
            raise FedmoapError(
                f"data.source: coop: {path}: {split!r} is a {type(entries).__name__}, "
                "not a list of [image path, label, class name]"
            )
        for i, e in enumerate(entries):
            if not (
                isinstance(e, list)
                and len(e) == 3
                and isinstance(e[0], str)
                and isinstance(e[2], str)
                and isinstance(e[1], int)
                and not isinstance(e[1], bool)
                and e[1] >= 0
            ):
                raise FedmoapError(
                    f"data.source: coop: {path}: {split}[{i}] is {_short(e)}, not [image path, label >= 0, class name]"
                )
        items[split] = [tuple(e) for e in entries]
    if not items["train"]:
        raise FedmoapError(f"data.source: coop: {path} lists no training images")
    return items


def _coop_classnames(path: Path, items: dict[str, list[tuple[str, int, str]]]) -> list[str]:
    names: dict[int, str] = {}
    for split in COOP_SPLITS:
        for _, label, name in items[split]:
            if names.setdefault(label, name) != name:
                raise FedmoapError(
                    f"data.source: coop: {path}: label {label} is named both {names[label]!r} and {name!r}"
                )
    gaps = sorted(set(range(max(names) + 1)) - set(names))
    if gaps:
        raise FedmoapError(
            f"data.source: coop: {path}: labels {gaps[:5]} have no image in any split (labels must be 0..{max(names)})"
        )
    ordered = [names[k] for k in range(len(names))]
    dup = sorted({n for n in ordered if ordered.count(n) > 1})
    if dup:
        _warn(f"coop: {path}: class names {dup[:3]} name several labels each; their prompts are identical")
    return ordered


def _coop_image_dir(split_file: Path, name: str, items: dict) -> Path:
    root = split_file.parent
    first = items["train"][0][0]
    candidates = [root / COOP_IMAGE_DIRS[name]] if name in COOP_IMAGE_DIRS else []
    candidates += [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        if (folder / first).is_file():
            return folder
    expected = root / COOP_IMAGE_DIRS[name] if name in COOP_IMAGE_DIRS else f"{root} or a folder in it"
    raise FedmoapError(
        f"data.source: coop: image {first!r} (first training entry of {split_file.name}) is not in {expected}"
    )


# ----------------------------------------------------------------------------------------- FedBN


@dataclass(frozen=True)
class FedbnLayout:
    folder: str  # next to FedBN's data/, holding the split pickles and the images
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    sizes: tuple[int, int]


FEDBN = {
    "fedbn-domainnet": FedbnLayout(
        "DomainNet",
        ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        ("bird", "feather", "headphones", "ice_cream", "teapot", "tiger", "whale", "windmill", "wine_glass", "zebra"),
        (18278, 4573),
    ),
    "fedbn-office": FedbnLayout(
        "office_caltech_10",
        ("amazon", "caltech", "dslr", "webcam"),
        (
            "back_pack",
            "bike",
            "calculator",
            "headphones",
            "keyboard",
            "laptop_computer",
            "monitor",
            "mouse",
            "mug",
            "projector",
        ),
        (2025, 508),
    ),
}
"""FedBN's two feature-shift benchmarks as FedBN, FedOTP and pFedMoAP read them. Classes are in
sorted order, which is also FedBN's ``label_dict`` order (the FedOTP-derived code's class-name
*set* is not used); domains are in FedBN's order (also sorted). ``sizes``: pFedMoAP Table 5."""


def load_fedbn(kind: str, location: str) -> tuple[DatasetDict, str]:
    """FedBN's split pickles and images (FedBN README; FedOTP ``utils/data_utils.py``), e.g.
    ``fedbn-domainnet:/data`` where ``/data`` is FedBN's ``data/`` folder (FedOTP's
    ``DATASET.ROOT``)::

        data/
        |-- DomainNet/
        |   |-- clipart_train.pkl  clipart_test.pkl  ...  sketch_train.pkl  sketch_test.pkl
        |   |-- clipart/bird/*.jpg ...                    (the DomainNet images)
        |-- office_caltech_10/
            |-- amazon_train.pkl  amazon_test.pkl  ...  webcam_test.pkl
            |-- amazon/back_pack/*.jpg ...

    Each ``<domain>_<split>.pkl`` is a pickled pair (image paths, class names), paths relative
    to ``data/`` (``DomainNet/clipart/bird/...``), as FedBN ships them. ``location`` may also
    be the ``DomainNet/`` (``office_caltech_10/``) folder itself. Splits ``train`` and ``test``,
    each the domains' splits concatenated in domain order; columns ``image``, ``label``
    (``ClassLabel``, the 10 class names sorted) and ``domain`` (the domain's name).
    The pickles are unpickled: only point this at files you trust.
    """
    spec = FEDBN[kind]
    where = Path(location).expanduser()
    root = where if (where / spec.folder).is_dir() else where.parent
    folder = root / spec.folder
    if not (folder / f"{spec.domains[0]}_train.pkl").is_file():
        raise FedmoapError(
            f"data.source: {kind}: no FedBN split files under {str(where)!r} "
            f"(expected {spec.folder}/{spec.domains[0]}_train.pkl ... "
            f"{spec.domains[-1]}_test.pkl there)"
        )
    index = {c: k for k, c in enumerate(spec.classes)}
    columns = {s: {"image": [], "label": [], "domain": []} for s in ("train", "test")}
    files = []
    for split, cols in columns.items():
        for domain in spec.domains:
            pkl = folder / f"{domain}_{split}.pkl"
            paths, labels = _read_fedbn_pickle(kind, pkl)
            unknown = sorted(set(labels) - set(index))
            if unknown:
                raise FedmoapError(
                    f"data.source: {kind}: {pkl} has labels {unknown[:3]} that are not "
                    f"among the {len(spec.classes)} classes ({', '.join(spec.classes)})"
                )
            _check_present(root, paths, pkl.name)
            cols["image"] += [os.path.join(root, p) for p in paths]
            cols["label"] += [index[y] for y in labels]
            cols["domain"] += [domain] * len(paths)
            files.append(pkl)
    sizes = (len(columns["train"]["image"]), len(columns["test"]["image"]))
    if sizes != spec.sizes:
        _warn(
            f"{kind}: {folder} has {sizes[0]}/{sizes[1]} train/test images; the paper's "
            f"(Table 5) are {spec.sizes[0]:,}/{spec.sizes[1]:,}"
        )
    features = Features({"image": Image(), "label": ClassLabel(names=list(spec.classes)), "domain": Value("string")})
    splits = DatasetDict({s: Dataset.from_dict(c, features=features) for s, c in columns.items()})
    images = [p for c in columns.values() for p in c["image"]]
    return splits, _data_id(kind, files, spec.folder, images)


def _read_fedbn_pickle(kind: str, pkl: Path) -> tuple[list[str], list[str]]:
    if not pkl.is_file():
        raise FedmoapError(f"data.source: {kind}: FedBN split file {pkl} is missing")
    try:
        with open(pkl, "rb") as f:
            obj = pickle.load(f)
    except Exception as exc:  # unpickling raises many kinds
        raise FedmoapError(
            f"data.source: {kind}: cannot unpickle {pkl} ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from None
    pair = _pair(obj)
    if pair is None:
        raise FedmoapError(
            f"data.source: {kind}: {pkl} does not hold FedBN's pair (image paths, "
            f"class names) of equal length (it holds {_short(obj)})"
        )
    return pair


def _pair(obj: object) -> tuple[list[str], list[str]] | None:
    """``obj`` as two equally long lists of strings, or None."""
    if not isinstance(obj, (tuple, list, np.ndarray)) or len(obj) != 2:
        return None
    parts = []
    for part in obj:
        if not isinstance(part, (tuple, list, np.ndarray)):
            return None
        values = list(np.asarray(part, dtype=object).ravel())
        if not all(isinstance(v, str) for v in values):
            return None
        parts.append([str(v) for v in values])
    return (parts[0], parts[1]) if len(parts[0]) == len(parts[1]) else None


# ---------------------------------------------------------------------------------------- shared

LAYOUTS: dict[str, Callable[[str], tuple[DatasetDict, str]]] = {
    "coop": load_coop,
    "fedbn-domainnet": lambda location: load_fedbn("fedbn-domainnet", location),
    "fedbn-office": lambda location: load_fedbn("fedbn-office", location),
}
"""``data.source`` prefix (before the first ``:``) -> loader of the rest."""


def _check_present(root: Path, rel_paths: list[str], listed_in: str) -> None:
    """Every path exists under ``root`` (one directory listing per folder, not one stat per file)."""
    listings: dict[str, set[str] | None] = {}
    missing = []
    for rel in rel_paths:
        full = os.path.join(root, rel)
        folder, name = os.path.split(full)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = None
        if listings[folder] is None or name not in listings[folder]:
            missing.append(rel)
    if missing:
        raise FedmoapError(
            f"data.source: {len(missing)} of the {len(rel_paths)} images listed in "
            f"{listed_in} are missing under {root} (first: {missing[0]!r})"
        )


def _data_id(kind: str, split_files: list[Path], image_folder: str, images: list[str]) -> str:
    digest = hashlib.sha256()
    for f in split_files:
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    digest.update(image_folder.encode())
    for k in np.unique(np.linspace(0, len(images) - 1, num=64).astype(int)) if images else []:
        digest.update(str(os.path.getsize(images[k])).encode() + b";")
    return f"{kind}-v{LAYOUT_FORMAT}-{digest.hexdigest()[:24]}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _warn(message: str) -> None:
    print(f"fedmoap: warning: data.source: {message}", file=sys.stderr)
