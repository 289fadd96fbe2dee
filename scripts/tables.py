"""pFedMoAP's tables in shape, re-run (none copied) on the offline default backbone: every method of
the paper's Tables 1-4 on a pathological split (Table 1's shape) and a Dirichlet split (Table 3's),
3 seeds, each seed's split identical for every method.

    python scripts/tables.py [--out runs/tables] [--seeds 0 1 2] [--splits pathological dirichlet]
                             [--methods NAME ...] [-- extra fit overrides]

Settings (chosen to fit 12 methods x 2 splits x 3 seeds in about an hour of 2 CPU cores; the
paper's own are in configs/paper/): packaged towers, Fashion-MNIST, 5 clients, full
participation, 8 shots per class and client, 100 test images per client following its training
label mix, 10 rounds of 5 local epochs, SGD lr 0.01 (the offline default's), batch 32.
``pathological``: 2 disjoint classes per client (Table 1: disjoint classes, 10 clients);
``dirichlet``: Dir(0.5) over labels (Table 3's alpha; 5 clients instead of 100 at 10 %).

Every method runs with its paper config (configs/paper/methods/NAME.yaml) at the paper's
16-token context. The first method of a (split, seed) writes ``split.json``; every other method
of that cell reads it (``data.split_file``). Finished runs are skipped (results.json complete),
interrupted ones resume. Writes ``OUT/tables.json`` (every run's final and last-5 mean accuracy,
seconds) and ``OUT/tables.md``: mean ± sample std over seeds of the final round's and of the
last 5 rounds' mean per-client accuracy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD_CONFIGS = REPO / "configs" / "paper" / "methods"

ROWS = {  # table label (docs/evidence.md) -> method config (configs/paper/methods/<name>.yaml)
    "ZS-CLIP": "zeroshot",
    "CoOp (paper: 25 epochs once)": "coop",
    "CoOp (every round, 10 x 5)": "coop_every_round",
    "PromptFL": "promptfl",
    "PromptFL+FT": "promptfl_ft",
    "PromptFL+FedProx": "fedprox",
    "PromptFL+FedPer": "fedper",
    "PromptFL+FedAMP": "fedamp",
    "pFedPrompt (reconstruction)": "pfedprompt",
    "FedOTP": "fedotp",
    "FedPGP": "fedpgp",
    "pFedMoAP (λ = 0)": "pfedmoap_lam0",
    "pFedMoAP (λ = 0.5)": "pfedmoap",
}
COMMON = ["--data.num_clients", "5", "--data.shots", "8", "--data.max_test_per_client", "100",
          "--fed.rounds", "10", "--train.local_epochs", "5", "--fed.participation", "1.0"]
SPLITS = {
    "pathological": ["--data.partition", "pathological", "--data.classes_per_client", "2"],
    "dirichlet": ["--data.partition", "dirichlet", "--data.alpha", "0.5"],
}


def _shared_backbones() -> None:
    """Build each backbone once per process (runs in a row share the frozen model; fit() would
    load the packaged towers again for every run)."""
    import fedmoap.fit as fit_module

    if getattr(fit_module.build_backbone, "shared", False):
        return
    build, built = fit_module.build_backbone, {}

    def shared(args, seed=0):
        key = (repr(args), None if args.arch == "packaged-towers" else seed)
        if key not in built:
            built[key] = build(args, seed)
        return built[key]

    shared.shared = True
    fit_module.build_backbone = shared


def run_cell(run_dir: Path, args: list[str], split_from: Path | None = None) -> dict:
    """Fit one run (or read it back if finished; resume it if interrupted); returns its numbers."""
    from fedmoap.cli import parse_fit
    from fedmoap.fit import fit

    _shared_backbones()

    argv = ["fit", *args] + (["--data.split_file", str(split_from)] if split_from else [])
    cfg, _, _ = parse_fit(argv)
    results = run_dir / "results.json"
    t = time.perf_counter()
    done = json.loads(results.read_text()) if results.exists() else {"rounds": []}
    finished = bool(done["rounds"]) and done["rounds"][-1]["round"] >= cfg.fed.rounds
    seconds = done.get("seconds", float("nan")) if finished else None
    if not finished:
        fit(cfg, run_dir, progress=False)
        seconds = time.perf_counter() - t
        done = json.loads(results.read_text())
        done["seconds"] = seconds
        results.write_text(json.dumps(done, indent=1))
    rounds = [r for r in done["rounds"] if "mean_acc" in r]
    last5 = [r["mean_acc"] for r in rounds[-5:]]
    return {"final": rounds[-1]["mean_acc"], "last5": sum(last5) / len(last5),
            "per_client_final": {c: v["acc"] for c, v in rounds[-1]["clients"].items()},
            "seconds": seconds, "run_dir": str(run_dir), "argv": argv[1:]}


def fmt(values: list[float], bold: bool = False) -> str:
    """Mean ± sample standard deviation, in %."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    text = f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"
    return f"**{text}**" if bold else text


def markdown(raw: dict[str, dict[str, list[dict]]], splits: list[str]) -> str:
    head = "| method | " + " | ".join(f"{s}: final round | {s}: last 5 rounds" for s in splits) + " |"
    lines = [head, "|---|" + "---|---|" * len(splits)]
    best = {(s, k): max(statistics.mean(r[k] for r in raw[m][s]) for m in raw if raw[m].get(s))
            for s in splits for k in ("final", "last5")}
    for label, cells in raw.items():
        row = []
        for s in splits:
            for k in ("final", "last5"):
                values = [r[k] for r in cells.get(s, [])]
                row.append(fmt(values, statistics.mean(values) == best[(s, k)]) if values else "–")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/tables"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--methods", nargs="+", default=list(ROWS.values()),
                    help="method configs (configs/paper/methods/NAME.yaml) to run, in table order")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args(argv)
    rows = {label: name for label, name in ROWS.items() if name in a.methods}
    rows.update({name: name for name in a.methods if name not in rows.values()})
    raw: dict[str, dict[str, list[dict]]] = {label: {} for label in rows}
    t0 = time.perf_counter()
    for split in a.splits:
        for seed in a.seeds:
            split_file = None
            for label, name in rows.items():
                run_dir = a.out / split / f"seed{seed}" / name
                args = ["--config", str(METHOD_CONFIGS / f"{name}.yaml"), *COMMON, *SPLITS[split],
                        "--seed", str(seed), *a.overrides]
                cell = run_cell(run_dir, args, split_file)
                split_file = split_file or run_dir / "split.json"
                raw[label].setdefault(split, []).append({"seed": seed, **cell})
                print(f"{split} seed {seed} {label}: final {100 * cell['final']:.2f} "
                      f"last5 {100 * cell['last5']:.2f} ({cell['seconds']:.0f} s)", flush=True)
    table = markdown(raw, a.splits)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "tables.md").write_text(table + "\n")
    result = {"settings": {"common": COMMON, "splits": {s: SPLITS[s] for s in a.splits},
                           "seeds": a.seeds, "overrides": a.overrides},
              "rows": raw, "seconds": time.perf_counter() - t0,
              "run_seconds": sum(c["seconds"] for cells in raw.values() for v in cells.values() for c in v)}
    (a.out / "tables.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
