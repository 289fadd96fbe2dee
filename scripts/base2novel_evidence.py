"""Base-to-novel evidence on the offline default (docs/evaluation.md): zero-shot (the
reference), CoOp, PromptFL, pFedMoAP (and FedPGP where the method exists), over seeds, with
``--eval.modes "[local,base2novel]"``; each seed's split and class split identical for all methods.

    python scripts/base2novel_evidence.py [--seeds 0 1 2] [--out runs/base2novel] \
        [--max_test_images 1000] [-- extra fit overrides]

Prints a Markdown table (mean ± sample std over seeds, final round, of the mean over clients of
local / base / novel accuracy, HM(base, novel) and HM(local, base, novel)) and writes it with the
raw per-run numbers to OUT (table.md, base2novel.json). Re-running resumes finished runs (no work).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedmoap import report
from fedmoap.cli import parse_fit
from fedmoap.fit import fit
from fedmoap.methods import registry

VARIANTS = {
    "zero-shot (\"a photo of a {}.\")": "zeroshot",
    "CoOp (each client alone)": "coop",
    "PromptFL": "promptfl",
    "pFedMoAP": "pfedmoap",
    "FedPGP": "fedpgp",
}
COLUMNS = [("b2n.local", "local"), ("b2n.base", "base"), ("b2n.novel", "novel"),
           ("b2n.hm", "HM(base, novel)"), ("b2n.hm3", "HM(local, base, novel)")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/base2novel")
    ap.add_argument("--max_test_images", type=int, default=1000,
                    help="eval.max_test_images: base and novel test images per seed (of 5,000 each)")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args()
    out = Path(a.out)
    names = registry()
    variants = {label: m for label, m in VARIANTS.items() if m in names}
    missing = [m for m in VARIANTS.values() if m not in names]
    raw: dict[str, list[dict]] = {}
    for label, method in variants.items():
        for seed in a.seeds:
            run_dir = out / f"{method}-seed{seed}"
            cfg, _, _ = parse_fit(["fit", *a.overrides, "--method", method, "--seed", str(seed),
                                   "--eval.modes", "[local,base2novel]",
                                   "--eval.max_test_images", str(a.max_test_images)])
            t = time.perf_counter()
            fit(cfg, run_dir, progress=False)
            run = report.read_run(run_dir)
            metrics = run.metrics()
            raw.setdefault(label, []).append({"seed": seed, "run_dir": str(run_dir),
                                              "seconds": time.perf_counter() - t, **metrics})
            print(f"{label} seed {seed}: " + ", ".join(f"{name} {100 * metrics[key]:.2f}"
                                                       for key, name in COLUMNS)
                  + f" ({time.perf_counter() - t:.0f} s)", flush=True)
    groups = {g.method: g for g in report.summarize(report.load_runs(
        [out / f"{m}-seed{s}" for m in variants.values() for s in a.seeds]), group_by=[])}
    lines = ["| method | " + " | ".join(name for _, name in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, method in variants.items():
        g = groups[method]
        lines.append(f"| {label} | " + " | ".join(report.cell(*g.stats(key)[:2]) for key, _ in COLUMNS) + " |")
    table = "\n".join(lines)
    if missing:
        table += f"\n\n(not in this version of fedmoap: {', '.join(missing)})"
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "base2novel.json").write_text(json.dumps({"args": vars(a), "runs": raw}, indent=1))


if __name__ == "__main__":
    main()
