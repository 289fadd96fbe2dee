"""Every checkpoint and results.json name the code that wrote them; a resume across a code change
says so and still resumes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedmoap.run.checkpoint import checkpoint_path, code_version
from fedmoap.run.cli import main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def fit(run_dir: Path, rounds: int) -> int:
    return main(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--fed.rounds",
            str(rounds),
            "--run_dir",
            str(run_dir),
            "--data.feature_cache",
            str(run_dir.parent / "cache"),
            "--progress",
            "false",
            "--fabric.threads",
            "1",
        ]
    )


def test_checkpoints_and_results_record_the_code_version(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert fit(run_dir, 1) == 0
    now = code_version()
    assert now["version"]  # the installed package's version
    ckpt = torch.load(checkpoint_path(run_dir, 1), weights_only=True)
    assert ckpt["code"] == now
    assert json.loads((run_dir / "results.json").read_text())["code"] == now
    capsys.readouterr()
    ckpt["code"] = {"version": "0.0.1", "commit": "0" * 40}
    torch.save(ckpt, checkpoint_path(run_dir, 1))
    assert fit(run_dir, 2) == 0
    err = capsys.readouterr().err
    assert "written by fedmoap 0.0.1 (commit " + "0" * 40 + ")" in err
    assert json.loads((run_dir / "results.json").read_text())["rounds"][-1]["round"] == 2
