"""``fedmoap mia RUN_DIR``: membership inference against a finished run, on the tiny world.

The memorising target is a linear-head classifier trained alone by each client (``local_vpt``,
1 shot, many epochs): on the tiny random towers CoOp cannot fit even its own training images
(its loss stays near ln 10), so there would be nothing to infer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.run.cli import main
from fedmoap.run.studies.table import study_table
from tests.worlds import fit_smoke

TARGET = [
    "--method",
    "local_vpt",
    "--data.shots",
    "1",
    "--data.num_clients",
    "4",
    "--data.partition",
    "iid",
    "--data.max_test_per_client",
    "20",
    "--data.num_views",
    "0",
    "--fed.rounds",
    "1",
    "--train.local_epochs",
    "100",
    "--train.lr",
    "0.1",
]
MIA = ["--shadows", "2", "--progress", "false"]


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache) -> Path:
    return fit_smoke(tmp_path_factory.mktemp("target") / "run", *TARGET, cache=cache)


@pytest.fixture(scope="module")
def attacked(run) -> dict:
    assert main(["mia", str(run), *MIA]) == 0
    return json.loads((run / "mia" / "mia.json").read_text())


@pytest.fixture(scope="module")
def source():
    return load_source(DataArgs(source="synthetic"))


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("mia"))
    return dest


def test_a_memorising_target_is_attacked_well_above_chance(attacked):
    mlp, loss = attacked["attacks"]["mlp"], attacked["attacks"]["loss_threshold"]
    print({k: (a["accuracy"], a["auc"], a["tpr_at_1pct_fpr"]) for k, a in attacked["attacks"].items()})
    assert mlp["accuracy"] > 0.6 and loss["accuracy"] > 0.65
    assert mlp["auc"] > 0.6 and loss["auc"] > 0.75
    target = attacked["target"]
    assert target["clients"] == [0, 1, 2, 3] and target["members"] * 2 == target["samples"]
    assert mlp["unattacked"] == loss["unattacked"] == 0


def test_members_are_what_each_client_trained_on_and_balanced_per_class(run, attacked, source):
    clients = json.loads((run / "split.json").read_text())["clients"]
    for cid, rows in attacked["target"]["rows"].items():
        members, non_members = np.asarray(rows["members"]), np.asarray(rows["non_members"])
        assert set(members) <= set(clients[int(cid)]["train"]) and set(non_members) <= set(clients[int(cid)]["test"])
        assert len(set(members)) == len(members) and len(members) > 0
        assert sorted(source.train_labels[members]) == sorted(source.test_labels[non_members])
    # the shadows train and test on images no target client trains or is tested on
    target_train = {r for c in clients for r in c["train"]}
    target_test = {r for c in clients for r in c["test"]}
    for i in range(2):
        shadow = json.loads((run / "mia" / f"shadow-{i}" / "split.json").read_text())["clients"]
        assert shadow == json.loads((run / "mia" / f"shadow-{i}.split.json").read_text())["clients"]
        for mine, theirs in zip(shadow, clients):
            assert not set(mine["train"]) & target_train and not set(mine["test"]) & target_test
            assert sorted(source.train_labels[mine["train"]]) == sorted(source.train_labels[theirs["train"]])


def test_rerun_reuses_the_shadows_and_reproduces_bit_identically(run, attacked):
    first = (run / "mia" / "mia.json").read_bytes()
    before = tree(run / "mia")
    assert main(["mia", str(run), *MIA]) == 0
    assert (run / "mia" / "mia.json").read_bytes() == first
    assert tree(run / "mia") == before


def test_members_never_trained_on_give_chance(run, attacked, tmp_path, source):
    """DP-FPL's defect as a regression test: its "members" were cut from the client's data before
    training. Here split.json names, as each client's training images, unused images of the same
    classes; the model never saw them, so the attack must be at chance."""
    fake = copy_run(run, tmp_path / "fake")
    split = json.loads((fake / "split.json").read_text())
    used = {r for c in split["clients"] for r in c["train"]}
    free = {k: [r for r in np.flatnonzero(source.train_labels == k) if r not in used] for k in range(10)}
    for c in split["clients"]:
        c["train"] = sorted(int(free[source.train_labels[r]].pop()) for r in c["train"])
    (fake / "split.json").write_text(json.dumps(split))
    assert main(["mia", str(fake), *MIA]) == 0
    result = json.loads((fake / "mia" / "mia.json").read_text())
    print({k: (a["accuracy"], a["auc"]) for k, a in result["attacks"].items()})
    for name, a in result["attacks"].items():
        assert abs(a["accuracy"] - 0.5) < 0.12, name
        assert a["accuracy"] < attacked["attacks"][name]["accuracy"] - 0.1, name


def test_report_shows_the_attack_and_not_the_shadow_runs(run, attacked, capsys, tmp_path):
    assert main(["report", str(run.parent)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "mia.mlp" in table[0] and len(table) == 3  # header, rule, the target alone
    columns = ["final", "mia.mlp", "mia.loss", "mia.mlp.auc", "mia.loss.auc"]
    markdown, record = study_table({"target": {"s": [(0, run)]}}, ["s"], columns)
    want = [attacked["attacks"][k][v] for v in ("accuracy", "auc") for k in ("mlp", "loss_threshold")]
    assert [record["rows"]["target"]["s"][0][m] for m in columns[1:]] == want
    assert all(f"{100 * v:.2f}" in markdown for v in want)
    assert markdown.count("**") == 2  # the final accuracy in bold, no attack's success
    broken = copy_run(run, tmp_path / "broken")
    (broken / "mia").mkdir()
    (broken / "mia" / "mia.json").write_text('{"round": 1}')
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "mia.json" in err


def unfinished(run: Path, tmp_path: Path) -> list[str]:
    fake = copy_run(run, tmp_path / "unfinished")
    config = yaml.safe_load((fake / "config.yaml").read_text())
    config["fed"]["rounds"] = 2  # as a `fit --fed.rounds 2` stopped after round 1
    (fake / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return [str(fake)]


def no_free_test_images(run: Path, tmp_path: Path) -> list[str]:
    fake = copy_run(run, tmp_path / "crowded")
    split = json.loads((fake / "split.json").read_text())
    for i, c in enumerate(split["clients"]):
        c["test"] = list(range(i, 200, len(split["clients"])))
    (fake / "split.json").write_text(json.dumps(split))
    return [str(fake)]


@pytest.mark.parametrize(
    "make, culprit",
    [
        (lambda run, tmp: [str(tmp)], "config.yaml"),
        (lambda run, tmp: [str(run), "--shadows", "0"], "--shadows"),
        (lambda run, tmp: [str(run), "--target", "smallest"], "target"),
        (unfinished, "unfinished (round 1 of 2)"),
        (no_free_test_images, "data.max_test_per_client"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, make, culprit):
    argv = make(run, tmp_path)
    before = {p: tree(Path(p)) for p in [str(run), *argv[:1]]}
    assert main(["mia", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert {p: tree(Path(p)) for p in before} == before and not (tmp_path / "out").exists()


def test_help_lists_the_knobs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["mia", "--help"])
    assert exit_.value.code == 0
    assert "--shadows" in capsys.readouterr().out
