"""Whole ``fedmoap fit`` runs in child processes: peak memory against the number of simulated
clients, and round time on 1 versus 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedmoap.backbones import build_backbone
from fedmoap.data.sources import load_source
from fedmoap.data.synthetic import make_synthetic
from fedmoap.inputs.features import FeatureCache
from fedmoap.run import runs
from fedmoap.run.parse import parse_fit

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"

MEMORY_ARGS = [
    "--method",
    "pfedmoap",
    "--data.partition",
    "iid",
    "--data.shots",
    "1",
    "--data.max_test_per_client",
    "5",
    "--fed.participation",
    "1.0",
    "--method.n_ctx",
    "16",
    "--method.num_experts",
    "9",
    "--method.d_gating",
    "64",
    "--method.heads",
    "8",
    "--train.local_epochs",
    "1",
    "--fabric.threads",
    "1",
]
"""Tiny random model, one shot per class and at most 5 test images per client, every client
trained in every round; a client holds a 16-token prompt, a 16.6K-parameter gating network, its
momentum and 9 downloaded experts."""


def make_dataset(root: Path, clients: int = 1000) -> Path:
    """The smoke test's synthetic images: one training image per client (at least 1,000; 10
    classes) and twice as many test images per class as clients train on a class, so that every
    client gets a test image (test sets mirror the training data, each test image used once)."""
    per_class = max(100, -(-clients // 10))
    path = root / f"synthetic-{10 * per_class}-{20 * per_class}"
    if not path.exists():
        make_synthetic(train_per_class=per_class, test_per_class=2 * per_class).save_to_disk(str(path))
    return path


def fit_cmd(run_dir: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).with_name("peak_rss.py")),
        str(run_dir / "peak_rss.json"),
        "fit",
        "--config",
        str(SMOKE),
        "--run_dir",
        str(run_dir),
        "--data.feature_cache",
        str(cache),
        "--progress",
        "false",
        *extra,
    ]


def run_child(cmd: list[str]) -> dict:
    """Run ``cmd`` (a :func:`fit_cmd`); returns its record (peak RSS in MB as ``mb``, the fit's
    ``round_seconds``) after checking that its run finished (``results.json``, read by
    :mod:`fedmoap.run.runs`)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    run_dir = Path(cmd[cmd.index("--run_dir") + 1])
    if not runs.read_run(run_dir).finished:
        raise RuntimeError(f"{' '.join(cmd)} did not finish its rounds (see {run_dir}/results.json)")
    record = json.loads(Path(cmd[2]).read_text())
    return {**record, "mb": record["peak_rss_kb"] / 1024}


def warm_cache(data: Path, cache: Path) -> None:
    """Encode every image of ``data`` into ``cache`` with the runs' backbone, in this process."""
    cfg, _, _ = parse_fit(["fit", "--config", str(SMOKE), "--data.source", str(data)])
    backbone = build_backbone(cfg.model, cfg.seed)
    source = load_source(cfg.data)
    features = FeatureCache(cache, backbone, cfg.data.feature_batch_size, "cpu")
    for ds, data_id in ((source.train, source.train_id), (source.test, source.test_id)):
        features.get(ds, data_id, np.arange(len(ds)), cfg.data.image_column, 0)


def peak_memory(counts: list[int], rounds: int, work: Path, participation: float = 1.0) -> dict[str, float]:
    """Peak RSS (MB) of a run per number of clients; the feature cache is filled first (in this
    process) so that every measured run only reads it."""
    data, cache = make_dataset(work, max(counts)), work / "cache"
    common = ["--data.source", str(data), *MEMORY_ARGS]
    warm_cache(data, cache)
    out = {}
    for n in counts:
        t = time.perf_counter()
        run_dir = work / f"clients-{n}"
        mb = run_child(
            fit_cmd(
                run_dir,
                cache,
                *common,
                "--data.num_clients",
                str(n),
                "--fed.rounds",
                str(rounds),
                "--fed.participation",
                str(participation),
            )
        )["mb"]
        out[f"clients_{n}_mb"] = mb
        states = list((run_dir / "clients").glob("*/round_*.pt"))
        if states:
            out["client_state_kb"] = sum(p.stat().st_size for p in states) / len(states) / 1024
        print(
            f"  memory: {n} clients, {rounds} rounds: peak RSS {mb:.0f} MB ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    return out


def at_scale(counts: list[int], participants: int, rounds: int, work: Path) -> dict[str, float]:
    """Peak RSS (MB) and round time of runs with ``counts`` clients, the same ``participants``
    training in each round and evaluated in each round before the last
    (``eval.clients_per_round``; the last round evaluates every client). ``clients_N_mb``: peak
    RSS; ``clients_N_round_s``: mean seconds of the rounds before the last (training, search,
    aggregation, the sampled evaluation, the checkpoint); ``clients_N_last_s``: the last round,
    every client evaluated."""
    data, cache = make_dataset(work, max(counts)), work / "cache"
    warm_cache(data, cache)
    out: dict[str, float] = {"participants": participants, "rounds": rounds}
    for n in counts:
        t = time.perf_counter()
        record = run_child(
            fit_cmd(
                work / f"scale-{n}-p{participants}",
                cache,
                "--data.source",
                str(data),
                *MEMORY_ARGS,
                "--data.num_clients",
                str(n),
                "--fed.rounds",
                str(rounds),
                "--fed.participants",
                str(min(n, participants)),
                "--eval.clients_per_round",
                str(participants),
            )
        )
        each = record["each_round_seconds"]
        out[f"clients_{n}_mb"] = record["mb"]
        out[f"clients_{n}_round_s"] = sum(each[:-1]) / max(1, len(each) - 1)
        out[f"clients_{n}_last_s"] = each[-1]
        print(
            f"  at scale: {n} clients, {participants} per round: peak RSS {record['mb']:.0f} MB, "
            f"{out[f'clients_{n}_round_s']:.2f} s per round, last {each[-1]:.1f} s "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    return out


def round_time(rounds: int, work: Path) -> dict[str, float]:
    """Seconds of rounds on 1 and on 2 CPU processes (one thread each), smoke config with 10
    clients all participating and 5 local epochs. The first run fills the feature cache in its
    set-up, which the round time does not include."""
    cache = work / "cache-throughput"
    common = [
        "--data.num_clients",
        "10",
        "--fed.participation",
        "1.0",
        "--train.local_epochs",
        "5",
        "--fed.rounds",
        str(rounds),
        "--fabric.threads",
        "1",
        "--fabric.accelerator",
        "cpu",
    ]
    out = {}
    for devices in (1, 2):
        record = run_child(fit_cmd(work / f"throughput-{devices}", cache, *common, "--fabric.devices", str(devices)))
        out[f"procs_{devices}_s"] = record["round_seconds"] / rounds
        print(f"  throughput: {devices} process(es): {out[f'procs_{devices}_s']:.2f} s per round", flush=True)
    out["ratio_2_vs_1"] = out["procs_2_s"] / out["procs_1_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    """``python benchmarks/scale.py [--counts 10,100,10000] [--participants 10] [--rounds 3]
    [--json OUT] [--work DIR]``: the at-scale series (:func:`at_scale`) alone, with the ratios
    ``run.py`` reports."""
    import argparse
    import platform
    import tempfile

    import torch

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--counts", default="10,100,10000")
    p.add_argument("--participants", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--work", type=Path)
    a = p.parse_args(argv)
    counts = [int(c) for c in a.counts.split(",")]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        at = at_scale(counts, a.participants, a.rounds, a.work or Path(tmp))
    big, mid = counts[-1], counts[1] if len(counts) > 2 else counts[0]
    result = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "at_scale": at,
        f"ratio_{big}_vs_{counts[0]}": at[f"clients_{big}_mb"] / at[f"clients_{counts[0]}_mb"],
        f"round_ratio_{big}_vs_{mid}": at[f"clients_{big}_round_s"] / at[f"clients_{mid}_round_s"],
        "machine": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(result, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
