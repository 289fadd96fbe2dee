"""Every paper config, end to end for one round, on a tiny fixture in its dataset's real schema.

The fixtures copy what the paper's data looks like on disk, shrunk: CoOp's dataset folders
(folder, image folder and ``split_zhou_<Name>.json`` names, path patterns, class names in CoOp's
label order, a few classes), FedBN's split pickles and image tree for DomainNet and
Office-Caltech10 (all domains and classes, one image each per split), and for the CIFAR hub
datasets a ``save_to_disk`` copy with exactly the hub's features (``img``; ``label`` or
``fine_label``/``coarse_label`` with the hub's ClassLabel names; splits ``train``/``test``), passed
as ``data.source`` in place of the hub. Each config then runs through ``fedmoap.run.cli.main`` with
the tiny random model and size overrides. Then, per loader family, schema mismatches that must
stop with one line naming the culprit (CoOp's and FedBN's layouts: tests/data/test_layouts.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value

from fedmoap.config.sections import DataArgs
from fedmoap.data.layouts import FEDBN
from fedmoap.data.sources import load_source
from fedmoap.run.cli import main
from tests.worlds import build_coop, build_fedbn, coop_case, one_line_error

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


def test_cifar100_config_names_crab_not_the_hubs_cra(tmp_path):
    path = build_hub(tmp_path, "uoft-cs/cifar100")
    args = yaml.safe_load((REPO / "configs/paper/table3_cifar100.yaml").read_text())["data"]
    data = load_source(
        DataArgs(source=str(path), image_column="img", label_column="fine_label", classnames=args["classnames"])
    )
    assert len(data.classnames) == 100
    assert data.classnames[26] == "crab" and data.classnames[1] == "aquarium fish"


# ------------------------------------------------------------------ schema mismatches, one line


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
    one_line_error(*_saved_case(tmp_path, case))


def test_unknown_layout_prefix():
    one_line_error(DataArgs(source="fedbn-cifar:/data"), "fedbn-cifar:")


def test_a_schema_mismatch_exits_2_with_one_error_line(tmp_path, capsys):
    source, culprit = coop_case(build_coop(tmp_path, "oxford_flowers"), "missing_image")
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
