"""Every method on a device in every precision: the smoke config, 2 rounds each, in this process.

    python scripts/gpu_smoke.py --out evidence/DATE-gpu-smoke.json
        [--accelerator gpu] [--precisions 32-true 16-mixed bf16-mixed] [--methods NAME ...]

The cases are :func:`same_numbers.cases`' smoke cases (every registered method, its depth knobs
fitted to the tiny model), each run with ``--fabric.accelerator`` and ``--fabric.precision``. A
case that fails (a one-line error, or an exception, e.g. a dtype mismatch in half precision) is
recorded with its message and the script goes on; the JSON is rewritten after every case, so a
session that runs out of device time keeps what finished, and a rerun skips the cases already
recorded as passing. Exit 1 if any case failed. On a lent GPU run this first, then the longest
evidence study (docs/speed.md, "On a GPU").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import same_numbers  # noqa: E402

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def smoke_cases(methods: list[str] | None) -> dict[str, list[str]]:
    """Method name -> its smoke ``fit`` arguments (all registered methods, or ``methods``)."""
    cases = {k.removeprefix("smoke-"): v for k, v in same_numbers.cases().items() if k.startswith("smoke-")}
    unknown = sorted(set(methods or ()) - set(cases))
    if unknown:
        print(f"gpu_smoke: unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(cases))}", file=sys.stderr)
        raise SystemExit(2)
    return {m: a for m, a in cases.items() if not methods or m in methods}


def run_case(args: list[str], run_dir: Path) -> dict:
    """One smoke run; ``{"ok", "final_mean_acc", "seconds"}`` or ``{"ok": False, "error"}``."""
    from fedmoap.federation.results import read_results
    from fedmoap.run.cli import main as cli

    err = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err):
            rc = cli(["fit", *args, "--progress", "false", "--run_dir", str(run_dir)])
    except Exception as exc:  # a crash is this script's finding, not its end
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    seconds = time.perf_counter() - start
    if rc != 0:
        lines = err.getvalue().strip().splitlines()
        return {"ok": False, "error": f"exit {rc}: {lines[-1] if lines else ''}"[:500]}
    last = read_results(run_dir)["rounds"][-1]
    return {"ok": True, "final_mean_acc": last["mean_acc"], "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the JSON record (resumed if it exists)")
    ap.add_argument("--accelerator", default="gpu", help="Fabric accelerator (cpu to check the script itself)")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS))
    ap.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    ap.add_argument("--work", type=Path, default=None, help="run directories (default: a temporary one)")
    a = ap.parse_args(argv)

    import torch

    from fedmoap.io import atomic_write_text

    cases = smoke_cases(a.methods)
    record = json.loads(a.out.read_text()) if a.out.exists() else {}
    record.update(
        torch=torch.__version__,
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        accelerator=a.accelerator,
    )
    runs = record.setdefault("runs", {})
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        for precision in a.precisions:
            for method, args in cases.items():
                key = f"{method}|{precision}"
                if runs.get(key, {}).get("ok"):
                    continue
                run_dir = work / precision / method
                extra = ["--fabric.accelerator", a.accelerator, "--fabric.precision", precision]
                extra += ["--data.feature_cache", str(work / "cache")]
                runs[key] = run_case([*args, *extra], run_dir)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(a.out, json.dumps(record, indent=1, sort_keys=True))
                print(f"{key}: {'ok' if runs[key]['ok'] else 'FAILED ' + runs[key]['error']}", flush=True)
    failed = [k for k, v in runs.items() if not v["ok"]]
    tail = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"{len(runs) - len(failed)} of {len(runs)} cases passed{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
