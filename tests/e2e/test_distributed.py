"""Scale-out and preemption: 2 CPU processes (gloo) give the same numbers as 1, and a run stopped
by SIGUSR1/SIGTERM checkpoints, exits non-zero and resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmoap.preemption import EXIT_PREEMPTED, slurm_job_to_requeue

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"


def fit_cmd(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fedmoap",
        "fit",
        "--config",
        str(SMOKE),
        "--run_dir",
        str(run_dir),
        "--data.feature_cache",
        str(cache),
        "--progress",
        "false",
        "--fabric.threads",
        "1",
        *extra,
    ]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def rounds(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["rounds"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_two_processes_equal_one(tmp_path, cache):
    one = run(fit_cmd(tmp_path / "one", cache, "--fed.rounds", "2"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(
        fit_cmd(
            tmp_path / "two",
            cache,
            "--fed.rounds",
            "2",
            "--fabric.accelerator",
            "cpu",
            "--fabric.devices",
            "2",
            "--fabric.strategy",
            "ddp",
        )
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert rounds(tmp_path / "two") == rounds(tmp_path / "one")
    world = [json.loads((tmp_path / d / "results.json").read_text())["world_size"] for d in ("one", "two")]
    assert world == [1, 2]


TOTAL = "25"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert run(fit_cmd(run_dir, cache, "--fed.rounds", TOTAL)).returncode == 0
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_signal_checkpoints_exits_nonzero_and_resumes_identically(tmp_path, cache, reference, sig):
    total = TOTAL
    stopped = tmp_path / "stopped"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(
        fit_cmd(stopped, cache, "--fed.rounds", total),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list((stopped / "checkpoints").glob("round_*.pt")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "preempted" in err and "Traceback" not in err
    done = len(rounds(stopped))
    assert 1 <= done < int(total)
    resumed = run(fit_cmd(stopped, cache, "--fed.rounds", total))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert rounds(stopped) == rounds(reference)


def test_requeue_target_names_the_array_element(monkeypatch):
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert slurm_job_to_requeue() is None
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert slurm_job_to_requeue() == "1234"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert slurm_job_to_requeue() == "1200_7"
