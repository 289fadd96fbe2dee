"""Same numbers before and after a change that must not move them (a refactor).

    python scripts/same_numbers.py record --out runs/numbers-before [--cases NAME ...]
    ... change the code ...
    python scripts/same_numbers.py record --out runs/numbers-after
    python scripts/same_numbers.py compare runs/numbers-before runs/numbers-after

``record`` runs every case (one torch thread, in this process) and writes, per case,
``OUT/<case>/run`` (the run directory) and ``OUT/<case>/numbers.json``: the ``results.json``
rounds and summary without timings, plus a SHA-256 of every tensor of the final server state and
of every client's stored state (so a change below the resolution of accuracies also shows).
``compare`` prints one line per case (identical, or the first difference) and exits 1 if any
case differs or is missing on one side.

Cases: ``configs/smoke.yaml`` x every method; client_upload and record_sgd DP on PromptFL and
pFedMoAP; every evaluation mode (global, neighbor, base2novel, unseen_clients) on PromptFL and
pFedMoAP; the offline default (``offline-default``: packaged towers, Fashion-MNIST, 10 rounds;
minutes, and it needs the offline extra and the dataset).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--config", str(REPO / "configs" / "smoke.yaml"), "--fed.rounds", "2"]
DP = {
    "client_upload": ["--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.noise_multiplier", "1.0"],
    "record_sgd": ["--dp.mode", "record_sgd", "--dp.clip", "1.0", "--dp.noise_multiplier", "1.0"],
}
MODES = ["global", "neighbor", "base2novel", "unseen_clients"]
TIMING = ("seconds", "setup_s", "round_s")
SIZE = {"depth": "2", "text_blocks": "[1, 2]", "vision_blocks": "[1, 2]"}
"""Knobs set where a method has them, so that it fits the smoke config's 2-block tiny model."""
DEPTHS = ("vision_depth", "text_depth")
"""Prompt depths lowered to the tiny model's 2 blocks where a method's default is deeper."""


def cases() -> dict[str, list[str]]:
    """Case name -> ``fedmoap fit`` arguments."""
    from fedmoap.methods import registry

    out = {}
    for name, cls in registry().items():
        knobs = {f.name for f in dataclasses.fields(cls)}
        size = [a for k, v in SIZE.items() if k in knobs for a in (f"--method.{k}", v)]
        size += [
            a
            for f in dataclasses.fields(cls)
            if f.name in DEPTHS and f.default > 2
            for a in (f"--method.{f.name}", "2")
        ]
        out[f"smoke-{name}"] = [*SMOKE, "--method", name, *size]
    for method in ("promptfl", "pfedmoap"):
        for mode, args in DP.items():
            out[f"dp-{mode}-{method}"] = [*SMOKE, "--method", method, *args]
        for mode in MODES:
            out[f"eval-{mode}-{method}"] = [*SMOKE, "--method", method, "--eval.modes", f"[local,{mode}]"]
    out["offline-default"] = []
    return out


def tensor_digest(obj) -> str:
    """SHA-256 over every tensor in ``obj`` (nested dicts / lists), in sorted key order."""
    import torch

    h = hashlib.sha256()

    def walk(x, path: str) -> None:
        if isinstance(x, torch.Tensor):
            h.update(path.encode())
            h.update(str(x.dtype).encode())
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k], f"{path}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}/{i}")
        else:
            h.update(f"{path}={x!r}".encode())

    walk(obj, "")
    return h.hexdigest()[:16]


def numbers(run_dir: Path) -> dict:
    """What must not move: rounds and summary without timings, and tensor digests of the final
    server state and of every client's stored state."""
    import torch

    from fedmoap.federation.results import read_results

    res = read_results(run_dir)
    strip = lambda d: {k: v for k, v in d.items() if not any(t in k for t in TIMING)}  # noqa: E731
    ckpts = sorted((run_dir / "checkpoints").glob("round_*.pt"))
    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    clients = {}
    for cid, t in sorted(ckpt["store"].get("index", {}).items()) if isinstance(ckpt["store"], dict) else []:
        path = run_dir / "clients" / str(cid) / f"round_{int(t):04d}.pt"
        clients[str(cid)] = tensor_digest(torch.load(path, map_location="cpu", weights_only=True))
    return {
        "rounds": [strip(r) for r in res["rounds"]],
        "summary": strip(res.get("summary", {})),
        "privacy": {k: v for k, v in res.get("privacy", {}).items() if k != "notes"},
        "server": tensor_digest(ckpt["server"]),
        "clients": clients,
    }


def record(out: Path, names: list[str] | None) -> None:
    from fedmoap.run.cli import main as cli

    for name, args in cases().items():
        if names and name not in names:
            continue
        case = out / name
        if (case / "numbers.json").exists():
            continue
        rc = cli(["fit", *args, "--fabric.threads", "1", "--progress", "false", "--run_dir", str(case / "run")])
        if rc != 0:
            raise SystemExit(f"same_numbers: case {name} failed (exit {rc})")
        (case / "numbers.json").write_text(json.dumps(numbers(case / "run"), indent=1, sort_keys=True))
        print(f"recorded {name}", flush=True)


def first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'after' if k not in a else 'before'}"
            diff = first_difference(a[k], b[k], f"{path}/{k}")
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = first_difference(x, y, f"{path}/{i}")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {a!r} -> {b!r}"


def compare(before: Path, after: Path) -> int:
    names = sorted(
        {p.parent.name for p in before.glob("*/numbers.json")} | {p.parent.name for p in after.glob("*/numbers.json")}
    )
    bad = 0
    for name in names:
        files = [d / name / "numbers.json" for d in (before, after)]
        if not all(f.exists() for f in files):
            print(f"{name}: missing in {'before' if not files[0].exists() else 'after'}")
            bad += 1
            continue
        diff = first_difference(*(json.loads(f.read_text()) for f in files))
        print(f"{name}: {'identical' if diff is None else 'DIFFERS ' + diff}")
        bad += diff is not None
    print(f"{len(names) - bad} of {len(names)} cases identical")
    return 1 if bad or not names else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run every case and record its numbers")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--cases", nargs="+", default=None, help="only these cases (names as recorded)")
    cmp_ = sub.add_parser("compare", help="compare two recordings")
    cmp_.add_argument("before", type=Path)
    cmp_.add_argument("after", type=Path)
    a = ap.parse_args(argv)
    if a.command == "record":
        record(a.out, a.cases)
        return 0
    return compare(a.before, a.after)


if __name__ == "__main__":
    sys.exit(main())
