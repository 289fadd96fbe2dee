"""The generalisation protocols (``eval.modes`` xdomain, lodo, xdataset): each as a real run on the
offline stand-in ``fashion-mnist-styles`` with the tiny ViT (who trains on what, the pooled target
test sets, per-target and mean numbers in results.json, TensorBoard scalars, the report), bad
combinations refused with one line, and for every method the two models each target is scored
with: a client's own model gives on a pool its local numbers, the global component is one model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmoap.config.sections import DataArgs
from fedmoap.data.fashion_mnist_styles import STYLES
from fedmoap.data.sources import load_source
from fedmoap.federation import protocols
from fedmoap.federation.evaluation import peer_mean
from fedmoap.federation.results import mode_scalars
from fedmoap.methods import registry
from fedmoap.run.cli import main
from tests.methods.test_method_api import NUM_CLIENTS, federation
from tests.worlds import tiny_world

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
METHODS = registry()


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """(run(name, *args) -> (results with run_dir, split), the stand-in's source): one-round runs on the
    stand-in sharing a feature cache."""
    root = tmp_path_factory.mktemp("protocols")
    source = load_source(DataArgs(source="fashion-mnist-styles", domain_column="domain"))

    def run(name: str, *args: str) -> tuple[dict, dict]:
        run_dir = root / name
        assert (
            main(
                [
                    "fit",
                    "--config",
                    str(SMOKE),
                    "--data.source",
                    "fashion-mnist-styles",
                    "--data.domain_column",
                    "domain",
                    "--data.partition",
                    "class_blocks",
                    "--data.shots",
                    "2",
                    "--data.max_test_per_client",
                    "20",
                    "--data.num_views",
                    "0",
                    "--eval.max_test_images",
                    "30",
                    "--fed.rounds",
                    "1",
                    "--fed.participation",
                    "1.0",
                    "--train.local_epochs",
                    "1",
                    "--fabric.threads",
                    "1",
                    "--run_dir",
                    str(run_dir),
                    "--data.feature_cache",
                    str(root / "cache"),
                    "--progress",
                    "false",
                    *args,
                ]
            )
            == 0
        )
        results = json.loads((run_dir / "results.json").read_text())
        return {**results, "run_dir": run_dir}, json.loads((run_dir / "split.json").read_text())

    return run, source


def domains_of(source, split: dict, part: str) -> set[str]:
    rows = np.concatenate([c[part] for c in split["clients"]])
    codes = source.train_domains if part == "train" else source.test_domains
    return {source.domain_names[c] for c in np.unique(codes[rows])}


def check_entry(entry: dict, targets: set[str], clients: int) -> None:
    assert set(entry["targets"]) == targets
    for v in entry["targets"].values():
        assert v["global"]["n"] == 30 and v["global"]["acc"] == v["global"]["correct"] / 30
        assert len(v["personal"]["clients"]) == clients and all(c["n"] == 30 for c in v["personal"]["clients"].values())
    for part, key in (("global", "acc"), ("personal", "mean_acc")):
        mean = np.mean([v[part][key] for v in entry["targets"].values()])
        assert entry["mean"][part] == pytest.approx(mean, abs=1e-12)


def test_cross_domain_single_source_to_each_target(styles, capsys):
    run, source = styles
    results, split = run(
        "xdomain",
        "--method",
        "pfedmoap",
        "--data.classes_per_client",
        "5",
        "--data.num_clients",
        "2",
        "--eval.modes",
        "[local,xdomain]",
        "--eval.source_domains",
        "[original]",
    )
    targets = set(STYLES) - {"original"}
    assert split["domains"] == {"mode": "xdomain", "source": ["original"], "target": sorted(targets)}
    assert domains_of(source, split, "train") == domains_of(source, split, "test") == {"original"}
    for d in targets:  # each target's pooled test set: its own images, all classes available
        rows = np.asarray(split["eval_sets"][f"domain:{d}"])
        assert len(rows) == 30 and {source.domain_names[c] for c in source.test_domains[rows]} == {d}
    record = results["rounds"][-1]
    check_entry(record["xdomain"], targets, 2)
    scalars = mode_scalars(record)
    assert scalars["xdomain/edges/global_acc"] == record["xdomain"]["targets"]["edges"]["global"]["acc"]
    assert scalars["xdomain/mean/personal_acc"] == pytest.approx(record["xdomain"]["mean"]["personal"])
    assert results["summary"]["xdomain"]["final"]["mean/global"] == record["xdomain"]["mean"]["global"]
    assert results["eval_modes"] == ["local", "xdomain"]
    capsys.readouterr()
    assert main(["report", str(results["run_dir"])]) == 0
    assert "xdomain.global" in capsys.readouterr().out


def test_leave_one_domain_out_holds_the_target_out_of_training(styles):
    run, source = styles
    results, split = run(
        "lodo",
        "--method",
        "promptfl",
        "--data.classes_per_client",
        "5",
        "--data.num_clients",
        "8",
        "--eval.modes",
        "[local,lodo]",
        "--eval.target_domains",
        "[edges]",
    )
    assert split["domains"]["target"] == ["edges"] and len(split["clients"]) == 8
    assert domains_of(source, split, "train") == set(STYLES) - {"edges"}
    entry = results["rounds"][-1]["lodo"]
    check_entry(entry, {"edges"}, 8)
    target = entry["targets"]["edges"]  # PromptFL: one model, so every client's number is the global one
    assert {c["acc"] for c in target["personal"]["clients"].values()} == {target["global"]["acc"]}


def test_cross_dataset_scores_unseen_classes_in_unseen_domains(styles):
    run, source = styles
    results, split = run(
        "xdataset",
        "--method",
        "promptfl",
        "--data.classes_per_client",
        "2",
        "--data.num_clients",
        "6",
        "--eval.modes",
        "[local,xdataset]",
        "--eval.source_domains",
        "[original,inverted,rotated]",
        "--eval.target_domains",
        "[blurred,edges]",
    )
    train = np.concatenate([c["train"] for c in split["clients"]])
    assert set(source.train_labels[train]) == {0, 1, 2, 3, 4} and split["classes"]["novel"] == [5, 6, 7, 8, 9]
    assert domains_of(source, split, "train") == {"original", "inverted", "rotated"}
    for d in ("blurred", "edges"):
        rows = np.asarray(split["eval_sets"][f"novel:{d}"])
        assert set(source.test_labels[rows]) <= {5, 6, 7, 8, 9}
        assert set(source.test_domains[rows]) == {source.domain_names.index(d)}
    check_entry(results["rounds"][-1]["xdataset"], {"blurred", "edges"}, 6)


@pytest.mark.parametrize(
    "args,key",
    [
        (["--eval.modes", "[local,xdomain]"], "eval.modes xdomain needs data.domain_column"),
        (
            ["--data.domain_column", "domain", "--eval.modes", "[local,xdomain]"],
            "eval.modes xdomain needs eval.source_domains",
        ),
        (
            ["--data.domain_column", "domain", "--eval.modes", "[local,lodo]", "--eval.target_domains", '["0","1"]'],
            "eval.modes lodo needs eval.target_domains",
        ),
        (
            [
                "--data.domain_column",
                "domain",
                "--eval.modes",
                "[local,lodo]",
                "--eval.target_domains",
                '["1"]',
                "--eval.source_domains",
                '["0"]',
            ],
            "eval.source_domains: lodo trains on every domain",
        ),
        (
            ["--data.domain_column", "domain", "--eval.modes", "[xdomain,lodo]", "--eval.source_domains", '["0"]'],
            "eval.modes: xdomain and lodo",
        ),
        (["--eval.source_domains", '["0"]'], "eval.source_domains is set but eval.modes has no domain protocol"),
        (
            [
                "--data.domain_column",
                "domain",
                "--eval.modes",
                "[xdomain]",
                "--eval.source_domains",
                '["0"]',
                "--eval.target_domains",
                '["0"]',
            ],
            "eval.target_domains ['0'] are also in eval.source_domains",
        ),
        (
            [
                "--data.domain_column",
                "domain",
                "--eval.modes",
                "[xdataset]",
                "--eval.source_domains",
                '["0"]',
                "--method",
                "fedavg_vpt",
            ],
            "eval.modes xdataset: method fedavg_vpt",
        ),
        (
            ["--data.domain_column", "domain", "--eval.modes", "[xdomain]", "--eval.source_domains", "[dark]"],
            "eval.source_domains: no domain 'dark' in data.domain_column",
        ),
    ],
)
def test_bad_combinations_are_refused_with_one_line(tmp_path, capsys, args, key):
    rc = main(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--run_dir",
            str(tmp_path / "r"),
            "--data.feature_cache",
            str(tmp_path / "cache"),
            "--progress",
            "false",
            *args,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and key in err and "\n" not in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------- every method, in process
@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("cache4"), NUM_CLIENTS, num_views=1)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_scores_a_target_with_its_global_component_and_each_clients_model(world4, tmp_path, name):
    """A pool equal to client c's own test set: c's ``personal`` number is its ``local`` one; the
    global component is one model for everyone (a never-trained client beyond the federation);
    nothing is stored and the label space is restored."""
    fed = federation(world4, METHODS[name], tmp_path, participation=1.0)
    fed.run_round(1, progress=False)
    local = fed.evaluate(list(range(NUM_CLIENTS)), 1)
    for c in range(NUM_CLIENTS):
        fed.data.eval_pos[f"domain:own{c}"] = fed.data.test_pos[c]
    names, stored = list(fed.module.classnames), {c: fed.store.get(c) for c in range(NUM_CLIENTS)}
    entry = protocols.evaluate(fed, {"local", "xdomain"}, None, 1, False, peer_mean(fed))["xdomain"]
    for c in range(NUM_CLIENTS):
        mine = entry["targets"][f"own{c}"]["personal"]["clients"][str(c)]
        assert (mine["correct"], mine["n"]) == local[c]
        assert entry["targets"][f"own{c}"]["global"]["n"] == local[c][1]
    if not fed.module.personal_eval:
        for v in entry["targets"].values():
            assert {c["correct"] for c in v["personal"]["clients"].values()} == {v["global"]["correct"]}
    assert list(fed.module.classnames) == names
    for c in range(NUM_CLIENTS):
        s = fed.store.get(c)
        assert (s is None) == (stored[c] is None)
        if s is not None:
            assert all(torch.equal(s["params"][k], stored[c]["params"][k]) for k in s["params"])


def test_a_stored_split_must_match_the_protocol():
    from fedmoap.config.sections import EvalArgs
    from fedmoap.data.split import make_split
    from fedmoap.errors import FedmoapError
    from fedmoap.federation.config import RunConfig
    from fedmoap.federation.evaluation import complete_split

    args = DataArgs(source="synthetic", domain_column="domain", num_clients=3, shots=2)
    source = load_source(args)
    xdomain = RunConfig(data=args, eval=EvalArgs(modes=["local", "xdomain"], source_domains=["0"], max_test_images=25))
    plan = protocols.domain_plan(xdomain.eval, source)
    split = complete_split(make_split(args, source, 0, train_domains=plan.source_codes), xdomain, source, None)
    assert split.extra["domains"] == {"mode": "xdomain", "source": ["0"], "target": ["1"]}
    rows = split.extra["eval_sets"]["domain:1"]
    assert len(rows) == 25 and set(source.test_domains[rows]) == {1}
    assert complete_split(split, xdomain, source, None).extra["eval_sets"]["domain:1"] == rows  # kept as stored
    with pytest.raises(FedmoapError, match="was made for eval.modes xdomain"):
        complete_split(split, RunConfig(data=args), source, None)
    lodo = RunConfig(data=args, eval=EvalArgs(modes=["lodo"], target_domains=["0"]))
    with pytest.raises(FedmoapError, match="this run asks for"):
        complete_split(split, lodo, source, None)
    everywhere = make_split(args, source, 0)  # made without the protocol: clients train on both domains
    with pytest.raises(FedmoapError, match=r"clients \[.*\] train on domains outside \['0'\]"):
        complete_split(everywhere, xdomain, source, None)
