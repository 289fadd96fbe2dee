"""Leave-one-domain-out or cross-domain evidence on the offline stand-in ``fashion-mnist-styles``
(docs/evaluation.md): for each held-out style (lodo) or each single source style (xdomain), every
method runs on the offline default's towers with FedTPG's class blocks (``data.classes_per_client``
classes per client and style), and the target accuracies are tabulated per target and as the mean.

    python scripts/protocols_evidence.py [--protocol lodo|xdomain] [--methods zeroshot promptfl pfedmoap]
        [--seeds 0] [--out runs/lodo] [-- extra fit overrides, e.g. --fed.rounds 5 --fabric.threads 1]

Prints a Markdown table (rows: methods; columns: the targets and their mean; each cell the global
component / the mean of the clients' own models, final round, mean over seeds) and writes it with
the raw numbers to OUT (table.md, protocols.json). Re-running resumes finished runs (no work).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedmoap import report
from fedmoap.cli import parse_fit
from fedmoap.data.fashion_mnist_styles import STYLES
from fedmoap.fit import fit

LODO = {"data.classes_per_client": "5", "data.num_clients": "8"}  # 4 source styles x 2 blocks of 5 classes
XDOMAIN = {"data.classes_per_client": "2", "data.num_clients": "5"}  # 1 source style x 5 blocks of 2 classes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=["lodo", "xdomain"], default="lodo")
    ap.add_argument("--methods", nargs="+", default=["zeroshot", "promptfl", "pfedmoap"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES,
                    help="held-out styles (lodo) or source styles (xdomain)")
    ap.add_argument("--out", default="runs/lodo")
    ap.add_argument("--max_test_images", type=int, default=1000, help="eval.max_test_images per target")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args()
    out, raw = Path(a.out), []
    shape = LODO if a.protocol == "lodo" else XDOMAIN
    key = "target_domains" if a.protocol == "lodo" else "source_domains"
    for method in a.methods:
        for style in a.styles:
            for seed in a.seeds:
                run_dir = out / f"{method}-{style}-seed{seed}"
                args = ["fit", "--data.source", "fashion-mnist-styles", "--data.domain_column", "domain",
                        "--data.partition", "class_blocks", *[x for k, v in shape.items() for x in (f"--{k}", v)],
                        "--eval.modes", f"[local,{a.protocol}]", f"--eval.{key}", f"[{style}]",
                        "--eval.max_test_images", str(a.max_test_images), *a.overrides,
                        "--method", method, "--seed", str(seed)]
                t = time.perf_counter()
                fit(parse_fit(args)[0], run_dir, progress=False)
                last = report.read_run(run_dir).results["rounds"][-1][a.protocol]
                row = {"method": method, "style": style, "seed": seed, "run_dir": str(run_dir),
                       "seconds": time.perf_counter() - t, "command": " ".join(args),
                       "targets": {d: {"global": v["global"]["acc"], "personal": v["personal"]["mean_acc"]}
                                   for d, v in last["targets"].items()}}
                raw.append(row)
                print(f"{method} {a.protocol} {style} seed {seed}: " + ", ".join(
                    f"{d} {100 * v['global']:.2f}/{100 * v['personal']:.2f}" for d, v in row["targets"].items())
                    + f" ({row['seconds']:.0f} s)", flush=True)
    table = tabulate(raw, a.methods, a.protocol)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "protocols.json").write_text(json.dumps({"args": vars(a), "runs": raw}, indent=1))


def tabulate(raw: list[dict], methods: list[str], protocol: str) -> str:
    """lodo: a column per held-out style (its one target); xdomain: per source style, the mean over
    its targets. Cells: global / personal, in %, mean over seeds."""
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in raw:
        accs = list(r["targets"].values())
        cells.setdefault((r["method"], r["style"]), []).append(
            (float(np.mean([v["global"] for v in accs])), float(np.mean([v["personal"] for v in accs]))))
    styles = list(dict.fromkeys(r["style"] for r in raw))
    head = "held out" if protocol == "lodo" else "source"
    lines = ["| method | " + " | ".join(f"{head} {s}" for s in styles) + " | mean |", "|---" * (len(styles) + 2) + "|"]
    for m in methods:
        means = [np.mean(cells[m, s], axis=0) for s in styles if (m, s) in cells]
        row = [f"{100 * g:.2f} / {100 * p:.2f}" for g, p in means]
        total = np.mean(means, axis=0)
        lines.append(f"| {m} | " + " | ".join(row) + f" | {100 * total[0]:.2f} / {100 * total[1]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
