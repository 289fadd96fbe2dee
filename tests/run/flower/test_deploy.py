"""A real deployment on localhost: a SuperLink and two SuperNodes as processes (ports from the OS),
each SuperNode with fedmoap's long-lived ClientApp executor (``--isolation process``,
:mod:`fedmoap.run.flower.worker`) and 0.1 s idle waits (:mod:`fedmoap.run.flower.supernode`), a
written Flower App submitted with ``flwr run``: results.json equals ``fedmoap fit``'s; a second
submission is a new run (its own run directory and node stores, keyed by Flower's run id); a bad
run config key fails the run with one ``fedmoap:`` line in ``flwr run``'s stream. Every process
is stopped (its whole process group) however the test ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from fedmoap.run.cli import main
from fedmoap.run.flower.local import (
    flower_env,
    free_port,
    start,
    start_superlink,
    start_supernode,
    stop,
    write_connection,
)
from fedmoap.run.flower.run import flwr_run_command
from tests.run.flower import SMOKE
from tests.run.flower.test_app import assert_same, fit_clients, last_checkpoint, rounds

CLIENTS = 2


def submit(app: Path, home: Path, run_config: dict | None = None) -> str:
    command = flwr_run_command(app, "deployment", run_config=run_config)
    proc = subprocess.run(
        command, env=flower_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300, check=False
    )
    return proc.stdout.decode(errors="replace")


def run_id_of(out: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith("Successfully started run ")]
    return line.split()[-1]


def test_a_deployment_on_localhost_gives_fits_numbers_and_each_submission_is_a_new_run(tmp_path, cache):
    args = [*SMOKE, *cache, "--method", "coop", "--data.num_clients", str(CLIENTS)]
    assert main(["fit", *args, "--run_dir", str(tmp_path / "fit")]) == 0
    app = tmp_path / "app"
    assert main(["flower", *args, "--run_dir", str(tmp_path / "unused"), "--app", str(app), "--write_only"]) == 0
    home, server, logs = tmp_path / "home", tmp_path / "server", tmp_path / "logs"
    server.mkdir()
    port = free_port()
    write_connection(home, "deployment", port)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_superlink(home, port, simulation=False, log=logs / "superlink.log", cwd=server))
        for i in range(CLIENTS):
            node_config = f'partition-id={i} fedmoap-dir="{tmp_path / "nodes" / str(i)}"'
            node_port = free_port()
            log = logs / f"supernode-{i}.log"
            procs.append(start_supernode(home, port, node_port, node_config, log, isolation="process", poll_s=0.1))
            worker = [sys.executable, "-m", "fedmoap.run.flower.worker", "--runtime-api-address"]
            procs.append(start([*worker, f"127.0.0.1:{node_port}"], flower_env(home), logs / f"worker-{i}.log"))
        first = submit(app, home)
        run_id = run_id_of(first)
        run_dir = server / "runs" / run_id
        assert (run_dir / "results.json").exists(), first[-3000:]
        assert rounds(run_dir) == rounds(tmp_path / "fit")
        res = json.loads((run_dir / "results.json").read_text())
        assert (res["engine"], res["engine_run_id"]) == ("flower", run_id)
        assert_same(last_checkpoint(run_dir)["server"], last_checkpoint(tmp_path / "fit")["server"], "server")
        nodes = {}
        for i in range(CLIENTS):
            (path,) = (tmp_path / "nodes" / str(i) / run_id / "clients" / str(i)).glob("round_*.pt")
            nodes[i] = torch.load(path, weights_only=True)
        assert_same(nodes, fit_clients(tmp_path / "fit"), "clients")

        second = submit(app, home, {"num-server-rounds": 1})  # `--run-config` overrides a typed key
        again = run_id_of(second)
        assert again != run_id and (server / "runs" / again / "results.json").exists(), second[-3000:]
        assert [r["round"] for r in rounds(server / "runs" / again)] == [1]
        assert (tmp_path / "nodes" / "0" / again).is_dir() and (run_dir / "results.json").exists()

        bad = submit(app, home, {"num-server-rounds": 0})
        errors = [x for x in bad.splitlines() if "fedmoap: " in x]
        assert errors and errors[0].endswith("fedmoap: run config: num-server-rounds 0 must be >= 1"), bad[-3000:]
    finally:
        for proc in reversed(procs):
            stop(proc)
    assert all(p.poll() is not None for p in procs)
