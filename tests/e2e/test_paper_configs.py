"""Every paper config, end to end for one round, on a tiny fixture in its dataset's real schema.

The fixtures copy what the paper's data looks like on disk, shrunk: CoOp's dataset folders
(folder, image folder and ``split_zhou_<Name>.json`` names, path patterns, class names in CoOp's
label order, a few classes), FedBN's split pickles and image tree for DomainNet and
Office-Caltech10 (all domains and classes, one image each per split), and for the CIFAR hub
datasets a ``save_to_disk`` copy with exactly the hub's features (``img``; ``label`` or
``fine_label``/``coarse_label`` with the hub's ClassLabel names; splits ``train``/``test``), passed
as ``data.source`` in place of the hub. Each config then runs through ``fedmoap.run.cli.main`` with
the tiny random model and size overrides. Then, per loader family, schema mismatches that must
stop with one line naming the culprit.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage

from fedmoap.config.sections import DataArgs
from fedmoap.data.layouts import FEDBN
from fedmoap.data.sources import load_source
from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main

REPO = Path(__file__).resolve().parents[2]
PAPER = sorted((REPO / "configs" / "paper").glob("*.yaml"))
TINY = [
    "--model.arch",
    "fedmoap-tiny-vit",
    "--model.pretrained",
    "null",
    "--fed.rounds",
    "1",
    "--data.shots",
    "1",
    "--data.max_test_per_client",
    "2",
    "--train.local_epochs",
    "1",
    "--data.num_views",
    "0",
    "--fabric.accelerator",
    "cpu",
    "--progress",
    "false",
    "--fabric.threads",
    "1",
]
"""Size overrides for a one-round run (one torch thread: on a busy 2-core machine two threads ran
the tiny text tower 25 times slower)."""
ERROR_LINE = re.compile(r"(?<![A-Za-z])error:")

# CoOp dataset folder -> (split file name, image folder, [(path stem, class name)] in label order,
# path of image i of a class). Twelve classes each, named and laid out as in CoOp's split files.
COOP = {
    "oxford_flowers": (
        "OxfordFlowers",
        "jpg",
        [
            (None, n)
            for n in (
                "pink primrose",
                "hard-leaved pocket orchid",
                "canterbury bells",
                "sweet pea",
                "english marigold",
                "tiger lily",
                "moon orchid",
                "bird of paradise",
                "monkshood",
                "globe thistle",
                "snapdragon",
                "colt's foot",
            )
        ],
        lambda stem, k, i: f"image_{100 * k + i + 1:05d}.jpg",
    ),
    "oxford_pets": (
        "OxfordPets",
        "images",
        [
            (s, s.lower())
            for s in (
                "Abyssinian",
                "american_bulldog",
                "american_pit_bull_terrier",
                "basset_hound",
                "beagle",
                "Bengal",
                "Birman",
                "Bombay",
                "boxer",
                "British_Shorthair",
                "chihuahua",
                "Egyptian_Mau",
            )
        ],
        lambda stem, k, i: f"{stem}_{i + 1}.jpg",
    ),
    "food-101": (
        "Food101",
        "images",
        [
            (n, n)
            for n in (
                "apple_pie",
                "baby_back_ribs",
                "baklava",
                "beef_carpaccio",
                "beef_tartare",
                "beet_salad",
                "beignets",
                "bibimbap",
                "bread_pudding",
                "breakfast_burrito",
                "bruschetta",
                "caesar_salad",
            )
        ],
        lambda stem, k, i: f"{stem}/{1000 * k + i}.jpg",
    ),
    "caltech-101": (
        "Caltech101",
        "101_ObjectCategories",
        [
            ("Faces", "face"),
            ("Leopards", "leopard"),
            ("Motorbikes", "motorbike"),
            ("accordion", "accordion"),
            ("airplanes", "airplane"),
            ("anchor", "anchor"),
            ("ant", "ant"),
            ("barrel", "barrel"),
            ("bass", "bass"),
            ("beaver", "beaver"),
            ("binocular", "binocular"),
            ("bonsai", "bonsai"),
        ],
        lambda stem, k, i: f"{stem}/image_{i + 1:04d}.jpg",
    ),
    "dtd": (
        "DescribableTextures",
        "images",
        [
            (n, n)
            for n in (
                "banded",
                "blotchy",
                "braided",
                "bubbly",
                "bumpy",
                "chequered",
                "cobwebbed",
                "cracked",
                "crosshatched",
                "crystalline",
                "dotted",
                "fibrous",
            )
        ],
        lambda stem, k, i: f"{stem}/{stem}_{i + 1:04d}.jpg",
    ),
}
COOP_PER_CLASS = {"train": 2, "val": 1, "test": 2}

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_PAPER = yaml.safe_load((REPO / "configs/paper/table3_cifar100.yaml").read_text())["data"]["classnames"]
CIFAR100_HUB = [("cra" if n == "crab" else n) for n in CIFAR100_PAPER]  # the hub's ClassLabel names
CIFAR100_COARSE = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path, "JPEG")


def build_coop(root: Path, folder: str) -> Path:
    """A CoOp dataset folder: images under its image folder, ``split_zhou_<Name>.json``."""
    name, images, classes, path = COOP[folder]
    base = root / folder
    split, seed = {}, 0
    for part, per_class in COOP_PER_CLASS.items():
        split[part] = []
        for k, (stem, classname) in enumerate(classes):
            for _ in range(per_class):
                rel = path(stem, k, seed)
                _image(base / images / rel, seed)
                split[part].append([rel, k, classname])
                seed += 1
    (base / f"split_zhou_{name}.json").write_text(json.dumps(split))
    return base


def build_fedbn(root: Path, kind: str) -> Path:
    """FedBN's data folder for one benchmark: ``<folder>/<domain>_<split>.pkl`` (a pickled pair
    of numpy arrays: image paths relative to the data folder, class names) and the images."""
    spec = FEDBN[kind]
    data, seed = root / kind, 0
    for domain in spec.domains:
        for split in ("train", "test"):
            paths = [
                f"{spec.folder}/{domain}/{c}/{domain}_{k:03d}_{seed + k:06d}.jpg" for k, c in enumerate(spec.classes)
            ]
            for k, p in enumerate(paths):
                _image(data / p, seed + k)
            seed += len(paths)
            with open(data / spec.folder / f"{domain}_{split}.pkl", "wb") as f:
                pickle.dump((np.array(paths), np.array(spec.classes)), f)
    return data


def build_hub(root: Path, hub: str) -> Path:
    """A ``save_to_disk`` copy in the hub dataset's exact schema (tiny)."""
    rng = np.random.default_rng(0)
    if hub == "uoft-cs/cifar10":
        features = Features({"img": Image(), "label": ClassLabel(names=CIFAR10)})
        sizes, columns = {"train": 5, "test": 2}, lambda y: {"label": y}
        n = len(CIFAR10)
    else:
        features = Features(
            {
                "img": Image(),
                "fine_label": ClassLabel(names=CIFAR100_HUB),
                "coarse_label": ClassLabel(names=CIFAR100_COARSE),
            }
        )
        sizes = {"train": 4, "test": 1}
        columns = lambda y: {"fine_label": y, "coarse_label": [v % 20 for v in y]}  # noqa: E731
        n = len(CIFAR100_HUB)
    splits = {}
    for split, per_class in sizes.items():
        labels = np.repeat(np.arange(n), per_class).tolist()
        images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in labels]
        splits[split] = Dataset.from_dict({"img": images, **columns(labels)}, features=features)
    out = root / hub.replace("/", "_")
    DatasetDict(splits).save_to_disk(str(out))
    return out


def fixture_for(root: Path, source: str) -> tuple[str, int | None]:
    """(data.source of a fixture standing in for ``source``, client count override or None)."""
    scheme, _, rest = source.partition(":")
    if scheme == "coop":
        return f"coop:{build_coop(root, Path(rest).name)}", None
    if scheme in FEDBN:
        return f"{scheme}:{build_fedbn(root, scheme)}", len(FEDBN[scheme].domains)
    assert source in ("uoft-cs/cifar10", "uoft-cs/cifar100"), f"no fixture for data.source {source!r}"
    return str(build_hub(root, source)), 4


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("paper"), tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("config", PAPER, ids=lambda p: p.stem)
def test_paper_config_runs_one_round(shared, config, capsys):
    root, cache = shared
    cfg = yaml.safe_load(config.read_text())
    source, clients = fixture_for(root / config.stem, cfg["data"]["source"])
    extra = ["--data.num_clients", str(clients)] if clients else []
    if cfg["method"]["class_path"] == "pfedmoap":
        extra += ["--method.num_experts", "1"]
    if cfg["train"].get("lr_schedule") == "rounds":
        extra += ["--train.lr_rounds", "1"]
    if not clients and cfg["data"]["partition"] == "dirichlet" and cfg["data"]["alpha"] < 0.5:
        clients = 3  # a skewed Dirichlet over 10 clients cannot be drawn from the 24-image fixture
        extra += ["--data.num_clients", "3"]
    run_dir = root / config.stem / "run"
    rc = main(
        [
            "fit",
            "--config",
            str(config),
            *TINY,
            *extra,
            "--data.source",
            source,
            "--data.feature_cache",
            str(cache),
            "--run_dir",
            str(run_dir),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    n = clients or cfg["data"]["num_clients"]
    assert set(results["rounds"][-1]["clients"]) == {str(i) for i in range(n)}


# ------------------------------------------------------------------------ what the loaders read


def test_coop_layout_reads_coops_names_and_splits(tmp_path):
    base = build_coop(tmp_path, "caltech-101")
    for test_split in ("test", "val"):
        data = load_source(DataArgs(source=f"coop:{base}", test_split=test_split))
        assert data.classnames[:6] == ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"]
        assert (len(data.train), len(data.test)) == (24, 12 * COOP_PER_CLASS[test_split])
        assert data.train.features["image"] == Image() and data.train[0]["image"].size == (8, 8)
    by_file = load_source(DataArgs(source=f"coop:{base / 'split_zhou_Caltech101.json'}"))
    assert by_file.train_id == data.train_id
    moved = tmp_path / "elsewhere"
    base.rename(moved)  # the same files elsewhere keep their id (and so their cached features)
    assert load_source(DataArgs(source=f"coop:{moved}")).train_id == data.train_id


@pytest.mark.parametrize("kind", sorted(FEDBN))
def test_fedbn_layout_reads_sorted_names_and_domains(tmp_path, kind):
    spec = FEDBN[kind]
    data_dir = build_fedbn(tmp_path, kind)
    for where in (data_dir, data_dir / spec.folder):  # FedBN's data/ or the benchmark's folder
        data = load_source(DataArgs(source=f"{kind}:{where}", domain_column="domain"))
        assert data.classnames == sorted(c.replace("_", " ") for c in spec.classes)
        assert data.train.unique("domain") == list(spec.domains)
        assert len(data.train) == len(data.test) == len(spec.domains) * len(spec.classes)
        first = data.train.cast_column("image", Image(decode=False))[0]
        assert first["label"] == 0 and f"/{spec.domains[0]}/{spec.classes[0]}/" in first["image"]["path"]


def test_cifar100_config_names_crab_not_the_hubs_cra(tmp_path):
    path = build_hub(tmp_path, "uoft-cs/cifar100")
    args = yaml.safe_load((REPO / "configs/paper/table3_cifar100.yaml").read_text())["data"]
    data = load_source(
        DataArgs(source=str(path), image_column="img", label_column="fine_label", classnames=args["classnames"])
    )
    assert len(data.classnames) == 100
    assert data.classnames[26] == "crab" and data.classnames[1] == "aquarium fish"


# ------------------------------------------------------------------ schema mismatches, one line


def _coop_case(base: Path, case: str) -> tuple[str, str]:
    split_file = base / "split_zhou_OxfordFlowers.json"
    split = json.loads(split_file.read_text())
    if case == "no_split_file":
        split_file.unlink()
        return f"coop:{base}", "split_zhou_"
    if case == "missing_val":
        del split["val"]
        culprit = "'val'"
    elif case == "entry_without_name":
        split["train"][3] = split["train"][3][:2]
        culprit = "train[3]"
    elif case == "label_named_twice":
        split["test"][0][2] = "not a flower"
        culprit = "label 0"
    elif case == "missing_image":
        (base / "jpg" / split["test"][5][0]).unlink()
        culprit = split["test"][5][0]
    split_file.write_text(json.dumps(split))
    return f"coop:{base}", culprit


def _fedbn_case(data: Path, case: str) -> tuple[str, str]:
    folder = data / "DomainNet"
    if case == "missing_pickle":
        (folder / "quickdraw_test.pkl").unlink()
        return f"fedbn-domainnet:{data}", "quickdraw_test.pkl"
    if case == "pickle_of_something_else":
        with open(folder / "real_train.pkl", "wb") as f:
            pickle.dump({"paths": [], "labels": []}, f)
        return f"fedbn-domainnet:{data}", "real_train.pkl"
    with open(folder / "sketch_train.pkl", "rb") as f:
        paths, labels = pickle.load(f)
    if case == "unknown_class":
        labels = labels.astype(object)
        labels[2] = "aircraft_carrier"
        culprit = "aircraft_carrier"
    else:  # missing_image
        (data / paths[4]).unlink()
        culprit = str(paths[4])
    with open(folder / "sketch_train.pkl", "wb") as f:
        pickle.dump((paths, labels), f)
    return f"fedbn-domainnet:{data}", culprit


def _saved_case(root: Path, case: str) -> tuple[DataArgs, str]:
    base = build_hub(root, "uoft-cs/cifar10")
    ds = DatasetDict.load_from_disk(str(base))
    args = DataArgs(source=str(root / "bad"), image_column="img")
    if case == "image_column_not_an_image":
        ds = ds.cast_column("label", Value("int64"))
        args.image_column, culprit = "label", "data.image_column 'label'"
    elif case == "label_column_a_list":
        multi = Features({**ds["train"].features, "multi": Sequence(Value("int64"))})
        ds = DatasetDict({s: d.map(lambda r: {"multi": [r["label"], 0]}, features=multi) for s, d in ds.items()})
        args.label_column, culprit = "multi", "data.label_column 'multi'"
    elif case == "splits_disagree_on_names":
        ds["test"] = ds["test"].cast_column("label", ClassLabel(names=[n.upper() for n in CIFAR10]))
        culprit = "disagree"
    elif case == "missing_split":
        ds = DatasetDict(train=ds["train"], validation=ds["test"])
        culprit = "no split 'test'"
    else:  # missing_domain_column
        args.domain_column, culprit = "domain", "'domain'"
    ds.save_to_disk(str(root / "bad"))
    return args, culprit


def _assert_one_line(args: DataArgs, culprit: str) -> None:
    with pytest.raises(FedmoapError) as exc:
        load_source(args)
    message = str(exc.value)
    assert "\n" not in message and culprit in message, message


@pytest.mark.parametrize(
    "case", ["no_split_file", "missing_val", "entry_without_name", "label_named_twice", "missing_image"]
)
def test_coop_schema_mismatch(tmp_path, case):
    source, culprit = _coop_case(build_coop(tmp_path, "oxford_flowers"), case)
    _assert_one_line(DataArgs(source=source), culprit)


@pytest.mark.parametrize("case", ["missing_pickle", "pickle_of_something_else", "unknown_class", "missing_image"])
def test_fedbn_schema_mismatch(tmp_path, case):
    source, culprit = _fedbn_case(build_fedbn(tmp_path, "fedbn-domainnet"), case)
    _assert_one_line(DataArgs(source=source, domain_column="domain"), culprit)


@pytest.mark.parametrize(
    "case",
    [
        "image_column_not_an_image",
        "label_column_a_list",
        "splits_disagree_on_names",
        "missing_split",
        "missing_domain_column",
    ],
)
def test_saved_dataset_schema_mismatch(tmp_path, case):
    _assert_one_line(*_saved_case(tmp_path, case))


def test_unknown_layout_prefix():
    _assert_one_line(DataArgs(source="fedbn-cifar:/data"), "fedbn-cifar:")


def test_a_schema_mismatch_exits_2_with_one_error_line(tmp_path, capsys):
    source, culprit = _coop_case(build_coop(tmp_path, "oxford_flowers"), "missing_image")
    rc = main(
        [
            "fit",
            "--config",
            str(REPO / "configs/paper/table1_flowers102.yaml"),
            *TINY,
            "--data.source",
            source,
            "--run_dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(ERROR_LINE.findall(err)) == 1 and culprit in err, err
    assert not (tmp_path / "run").exists()
