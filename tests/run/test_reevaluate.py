"""``fedmoap eval RUN_DIR``: a finished run evaluated again, rebuilt by the one builder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fedmoap.run.cli import main
from tests.worlds import fit_smoke


def fit(tmp_path: Path, *args: str) -> Path:
    return fit_smoke(tmp_path / "run", "--fed.rounds", "2", *args)


def tree(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return fit(tmp_path_factory.mktemp("pfedmoap"))


def test_eval_without_overrides_gives_the_last_rounds_accuracies(run, tmp_path):
    out = tmp_path / "again.json"
    assert main(["eval", str(run), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    last = json.loads((run / "results.json").read_text())["rounds"][-1]
    assert again["rounds"][0]["clients"] == last["clients"]
    assert again["rounds"][0]["round"] == last["round"] == 2
    assert again["evaluation_of"]["round"] == 2


def test_eval_adds_an_evaluation_mode_and_writes_only_its_file(run):
    before = tree(run)
    assert main(["eval", str(run), "--eval.modes", "[local,global,neighbor]"]) == 0
    after = tree(run)
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and new[0].startswith("eval/")
    assert {k: v for k, v in after.items() if k in before} == before
    record = json.loads((run / new[0]).read_text())["rounds"][0]
    assert 0 <= record["global"]["mean_acc"] <= 1 and 0 <= record["neighbor"]["mean_acc"] <= 1


@pytest.mark.parametrize(
    "override, culprit",
    [
        (["--train.lr", "0.5"], "train.lr"),
        (["--data.shots", "2"], "data.shots"),
        (["--eval.modes", "[local,unseen_clients]"], "unseen_clients"),
        (["--method", "promptfl"], "method"),
    ],
)
def test_eval_refuses_what_would_change_training(run, capsys, override, culprit):
    before = tree(run)
    assert main(["eval", str(run), *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0]
    assert tree(run) == before


def test_eval_of_a_directory_that_is_no_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_eval_with_a_method_knob_pepfedpt_uniform_prior(tmp_path):
    """PEP-FedPT's uniform-prior row: the same trained run evaluated with ``method.prior uniform``."""
    run_dir = fit(tmp_path, "--method", "pepfedpt", "--method.shared_tokens", "2", "--method.prior", "client")
    out = tmp_path / "uniform.json"
    assert main(["eval", str(run_dir), "--method.prior", "uniform", "--out", str(out)]) == 0
    uniform = json.loads(out.read_text())["rounds"][0]["clients"]
    client = json.loads((run_dir / "results.json").read_text())["rounds"][-1]["clients"]
    assert set(uniform) == set(client)
    assert uniform != client  # the prior moves the logits of a class-skewed client
