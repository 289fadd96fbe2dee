"""A deployed round against ``fedmoap fit``'s: a real SuperLink and one SuperNode per client on
localhost, each SuperNode with a long-lived ClientApp executor (:mod:`fedmoap.run.flower.worker`,
``--isolation process``), a written Flower App submitted with ``flwr run``:

    python benchmarks/flower_deploy.py [--rounds 4] [--poll-s 0.1] [--json FILE]

Two configs: the offline default (``fedmoap fit`` with no config: pFedMoAP, 5 clients) and the
smoke config (6 clients). ``--poll-s``: the SuperNodes' idle waits capped at that
(:mod:`fedmoap.run.flower.supernode`; 0: Flower's own, 3 s). Every process runs one thread
(``fabric.threads 1``, OMP_NUM_THREADS=1).
Per config: fit's seconds per round (its own measure) and the deployed run's, from the ServerApp's
message trace: round 1 (first query to round 1's last reply: nodes load the app and build their
clients) and the steady round (round r's last reply to round r+1's, averaged over r >= 1), and
their ratios to fit's round. Both runs must give the same accuracies (checked).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {"offline-default": [], "smoke": ["--config", str(REPO / "configs" / "smoke.yaml")]}


def accuracies(run_dir: Path) -> list[list]:
    res = json.loads((run_dir / "results.json").read_text())
    return [[r["round"], r["mean_acc"], r["clients"]] for r in res["rounds"]]


def one(name: str, rounds: int, work: Path, poll_s: float | None) -> dict:
    from flwr.app import MessageType

    from fedmoap.run.fit import fit
    from fedmoap.run.flower.app import read_trace
    from fedmoap.run.flower.local import (
        flower_env,
        free_port,
        start,
        start_superlink,
        start_supernode,
        stop,
        write_connection,
    )
    from fedmoap.run.flower.run import flwr_run_command, write_app
    from fedmoap.run.parse import parse_fit

    args = [*CONFIGS[name], "--fed.rounds", str(rounds), "--fabric.threads", "1", "--progress", "false"]
    cfg, _, _ = parse_fit(["fit", *args])
    out_fit = fit(cfg, work / f"fit-{name}", progress=False)
    fit_round = out_fit["round_seconds"] / rounds

    app, home, logs = work / f"app-{name}", work / f"home-{name}", work / f"logs-{name}"
    write_app(app, args, rounds)
    port = free_port()
    write_connection(home, "deployment", port)
    procs: list[subprocess.Popen] = []
    env = flower_env(home)
    try:
        procs.append(start_superlink(home, port, simulation=False, log=logs / "superlink.log", cwd=work))
        for i in range(cfg.data.num_clients):
            node_port = free_port()
            node_config = f'partition-id={i} fedmoap-dir="{work / f"nodes-{name}" / str(i)}"'
            procs.append(
                start_supernode(
                    home, port, node_port, node_config, logs / f"supernode-{i}.log", isolation="process", poll_s=poll_s
                )
            )
            worker = [sys.executable, "-m", "fedmoap.run.flower.worker", "--runtime-api-address"]
            procs.append(start([*worker, f"127.0.0.1:{node_port}"], env, logs / f"worker-{i}.log"))
        run_dir, trace = work / f"flower-{name}", work / f"trace-{name}"
        command = flwr_run_command(app, "deployment", run_config={"run-dir": str(run_dir), "trace-dir": str(trace)})
        t0 = time.perf_counter()
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1800)
        wall = time.perf_counter() - t0
    finally:
        for p in reversed(procs):
            stop(p)
    if not (run_dir / "results.json").exists():
        raise SystemExit(f"{name}: the deployed run ended without results:\n{proc.stdout.decode()[-3000:]}")
    if accuracies(run_dir) != accuracies(work / f"fit-{name}"):
        raise SystemExit(f"{name}: the deployed run's accuracies differ from fit's")
    marks = [(m["time"], m["direction"], m["type"], m["group"]) for m in read_trace(trace)]
    start_t = min(t for t, d, k, g in marks if d == "out" and k == MessageType.QUERY)
    last_in = [max(t for t, d, _, g in marks if d == "in" and g == str(r)) for r in range(1, rounds + 1)]
    steady = [b - a for a, b in zip(last_in, last_in[1:])]
    steady_s = sum(steady) / len(steady)
    return {
        "config": name,
        "clients": cfg.data.num_clients,
        "rounds": rounds,
        "supernode_poll_s": poll_s,
        "fit_round_s": fit_round,
        "deployed_round1_s": last_in[0] - start_t,
        "deployed_steady_round_s": steady_s,
        "steady_round_ratio": steady_s / fit_round,
        "round1_ratio": (last_in[0] - start_t) / fit_round,
        "flwr_run_wall_s": wall,
        "steady_rounds_s": steady,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--poll-s", type=float, default=0.1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedmoap-deploy-") as tmp:
        rows = [one(name, a.rounds, Path(tmp), a.poll_s or None) for name in a.configs]
    print(f"{'config':>16} {'clients':>7} {'fit s/round':>11} {'round 1 s':>9} {'steady s':>8} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['config']:>16} {r['clients']:>7} {r['fit_round_s']:>11.3f} {r['deployed_round1_s']:>9.2f} "
            f"{r['deployed_steady_round_s']:>8.3f} {r['steady_round_ratio']:>6.2f}"
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({r["config"]: r for r in rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
