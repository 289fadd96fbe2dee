"""slurm/ scripts against a real one-node SLURM (Debian's slurm-wlm, started by
slurm/testing/local-cluster.sh as root): a `fedmoap sweep --slurm` grid (its split-writing line,
then the lines that read the split) runs to completion, and the
element hit by its time-limit signal checkpoints, requeues itself, resumes and ends with the
numbers of an uninterrupted run. Skipped, with the reason, where SLURM is not installed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmoap.run.cli import main

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "slurm"


@pytest.mark.parametrize(
    "script", sorted(SLURM_DIR.rglob("*.sh")) + sorted(SLURM_DIR.glob("*.sbatch")), ids=lambda p: p.name
)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed (apt-get install slurm-wlm munge; .ci/run does it)")
    if os.geteuid() != 0 and subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("no running SLURM cluster and not root to start one")
    start = subprocess.run(
        ["bash", str(SLURM_DIR / "testing" / "local-cluster.sh")], capture_output=True, text=True, timeout=120
    )
    assert start.returncode == 0, start.stderr


def squeue_empty(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
    return out.returncode == 0 and not out.stdout.strip() or "Invalid job id" in out.stderr


def test_sweep_array_with_time_limit_preemption(cluster, tmp_path):
    runs = tmp_path / "runs"
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "sweep",
                "--config",
                str(REPO / "configs" / "smoke.yaml"),
                "--grid",
                "fed.rounds=2,3,300",
                "--seeds",
                "0",
                "--slurm",
                "--out",
                str(runs),
                # every element shares the feature cache of this test; one thread each on the 2-core node
                "--set",
                f"data.feature_cache={cache}",
                "fabric.threads=1",
            ]
        )
        == 0
    )
    sweep = runs / "grid.sweep.txt"
    lines = sweep.read_text().splitlines()
    assert len(lines) == 3 and ["--data.split_file" in line for line in lines] == [False, True, True]
    (tmp_path / "slurm-logs").mkdir()

    def submit(*options: str) -> str:
        done = subprocess.run(
            [
                "sbatch",
                "--parsable",
                *options,
                "--cpus-per-task=1",
                "--time=00:02:00",
                "--signal=B:USR1@60",
                f"--export=ALL,FEDMOAP={sys.executable} -m fedmoap",
                str(SLURM_DIR / "array.sbatch"),
                str(sweep),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]

    # as `sweep --slurm` says: the line that writes the split, then the lines that read it
    first = submit("--array=0-0")
    jobs = [first, submit(f"--dependency=afterok:{first}", "--array=1-2")]
    # meanwhile: the uninterrupted runs of the long lines, in this process, drawing the same split
    # from the seed instead of reading the one the first line writes
    reference = {}
    for k, line in enumerate(lines):
        if "--fed.rounds 300" in line:
            args = shlex.split(line)
            ref_dir = tmp_path / f"reference{k}"
            args[args.index("--run_dir") + 1] = str(ref_dir)
            i = args.index("--data.split_file")
            del args[i : i + 2]
            assert main(["fit", *args, "--progress", "false"]) == 0
            reference[k] = json.loads((ref_dir / "results.json").read_text())["rounds"]
    deadline = time.time() + 600
    while not all(squeue_empty(job) for job in jobs) and time.time() < deadline:
        time.sleep(5)
    logs = {p.name: p.read_text() for p in (tmp_path / "slurm-logs").glob("*.out")}
    assert all(squeue_empty(job) for job in jobs), f"arrays {jobs} still queued after 10 minutes; logs: {logs}"
    for k, line in enumerate(lines):
        run_dir = Path(line.split("--run_dir ")[1].split()[0])
        results = json.loads((run_dir / "results.json").read_text())["rounds"]
        assert len(results) == int(line.split("--fed.rounds ")[1].split()[0]), logs
        if k in reference:
            assert results == reference[k]
    long_log = next(text for text in logs.values() if "--fed.rounds 300" in text)
    assert "restart 1" in long_log, f"the long element was not preempted and requeued: {long_log}"
    assert "requeued SLURM job" in long_log or "requeueing from the batch script" in long_log
    print(long_log)
