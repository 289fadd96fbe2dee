"""Round time on Flower's Simulation Engine (Ray backend, one SuperNode per client) against
``fedmoap fit`` on the same config, for 10 and 100 clients, in one run:

    python benchmarks/flower.py [--clients 10 100] [--rounds 3] [--cpus 1] [--json FILE]

pFedMoAP on the tiny random model (per-client experts down, half the clients per round, one local
epoch), both engines on ``--cpus`` CPUs (fit: that many torch threads; Flower: a Ray of that many
CPUs, one CPU per ClientApp, so ``--cpus`` ClientApps at a time). Per engine: seconds per round
(fit's own measure, the loop's time over all rounds; on Flower it includes finding the nodes and
starting the Ray actors, the ``connect`` query, and each actor building its client side in round
1), and on Flower the steady round (from one round's last reply to the next's). Where Flower's
overhead goes, from the server's view of every message: the train exchange (payloads out,
uploads back) and the evaluate exchange per round; and encoding plus decoding a round's payloads
as Flower records. Both runs must give the same accuracies (checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ARGS = [
    "--method",
    "pfedmoap",
    "--data.partition",
    "iid",
    "--data.shots",
    "1",
    "--data.max_test_per_client",
    "5",
    "--train.local_epochs",
    "1",
    "--fed.participation",
    "0.5",
    "--progress",
    "false",
]


def timed_rounds(run_dir: Path) -> list[float]:
    res = json.loads((run_dir / "results.json").read_text())
    return [r["mean_acc"] for r in res["rounds"]]


def one(n: int, rounds: int, cpus: int, work: Path, data: Path) -> dict:
    from flwr.app import MessageType

    from fedmoap.run.fit import fit
    from fedmoap.run.flower.app import read_trace
    from fedmoap.run.flower.messages import from_record, to_record
    from fedmoap.run.flower.run import simulate
    from fedmoap.run.parse import parse_fit

    common = [
        "--config",
        str(REPO / "configs" / "smoke.yaml"),
        "--data.source",
        str(data),
        "--data.num_clients",
        str(n),
        "--fed.rounds",
        str(rounds),
        "--fabric.threads",
        str(cpus),
        "--data.feature_cache",
        str(work / "cache"),
        *ARGS,
    ]
    cfg, _, _ = parse_fit(["fit", *common])
    t0 = time.perf_counter()
    out_fit = fit(cfg, work / f"fit-{n}", progress=False)
    fit_wall = time.perf_counter() - t0

    t0 = time.perf_counter()
    simulate([*common, "--run_dir", str(work / f"flower-{n}")], num_cpus=cpus, client_cpus=1, trace=work / f"trace-{n}")
    flower_wall = time.perf_counter() - t0
    marks = [(m["time"], m["direction"], m["type"], m["group"]) for m in read_trace(work / f"trace-{n}")]
    if timed_rounds(work / f"fit-{n}") != timed_rounds(work / f"flower-{n}"):
        raise SystemExit(f"{n} clients: Flower's accuracies differ from fit's")

    def exchange(kind: str, r: str) -> float:
        ts = [t for t, _, k, g in marks if k == kind and g == r]
        return max(ts) - min(ts) if ts else 0.0

    per_round = [
        {
            "train_exchange_s": exchange(MessageType.TRAIN, str(r)),
            "evaluate_exchange_s": exchange(MessageType.EVALUATE, str(r)),
        }
        for r in range(1, rounds + 1)
    ]
    last_in = [max(t for t, d, _, g in marks if d == "in" and g == str(r)) for r in range(1, rounds + 1)]
    steady = [b - a for a, b in zip(last_in, last_in[1:])]  # round r's last reply to round r+1's
    flower_rounds_s = last_in[-1] - min(t for t, d, k, g in marks if d == "out" and k == MessageType.QUERY)

    # encoding: a round's payloads down and uploads up, as the transport does them
    from fedmoap.federation.build import build_federation
    from fedmoap.federation.rounds import default_fabric

    fed, _ = build_federation(cfg, run_dir=work / f"enc-{n}", fabric=default_fabric())
    payloads = [fed.server.payload(c, 1) for c in fed.trainers(1)] + [fed.server.eval_payload(c) for c in range(n)]
    t0 = time.perf_counter()
    for p in payloads:
        from_record(to_record(p))
    encode_s = time.perf_counter() - t0
    return {
        "clients": n,
        "rounds": rounds,
        "cpus": cpus,
        "fit_round_s": out_fit["round_seconds"] / rounds,
        "flower_round_s": flower_rounds_s / rounds,
        "ratio": flower_rounds_s / out_fit["round_seconds"],
        "flower_steady_round_s": sum(steady) / len(steady) if steady else None,
        "steady_ratio": (sum(steady) / len(steady)) / (out_fit["round_seconds"] / rounds) if steady else None,
        "connect_s": exchange(MessageType.QUERY, "0"),
        "fit_wall_s": fit_wall,
        "flower_wall_s": flower_wall,
        "per_round": per_round,
        "encode_decode_round_s": encode_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    from scale import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_dataset(work)
        rows = [one(n, a.rounds, a.cpus, work, data) for n in a.clients]
    print(
        f"{'clients':>7} {'fit s/round':>11} {'flower s/round':>14} {'ratio':>6} {'rounds 2+':>9} {'ratio':>6} "
        f"{'connect s':>9}  train / evaluate exchange per round (s)   encode+decode (s)"
    )
    for r in rows:
        ex = " ".join(f"{p['train_exchange_s']:.2f}/{p['evaluate_exchange_s']:.2f}" for p in r["per_round"])
        print(
            f"{r['clients']:>7} {r['fit_round_s']:>11.2f} {r['flower_round_s']:>14.2f} {r['ratio']:>6.1f} "
            f"{r['flower_steady_round_s'] or 0:>9.2f} {r['steady_ratio'] or 0:>6.1f} {r['connect_s']:>9.2f}  "
            f"{ex:<40} {r['encode_decode_round_s']:.3f}"
        )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
