"""The differential-privacy table (docs/privacy.md): PromptFL, PromptFL+FedProx and pFedMoAP on
the offline default at epsilon = inf (no DP), 8 and 1 (delta 1e-5, client level:
``dp.mode client_upload``), over seeds; each seed's split is identical for every method and budget.

    python scripts/dp_evidence.py [--seeds 0 1 2] [--epsilons inf 8 1] [--clip S]
                                  [--out runs/dp-evidence] [-- extra fit overrides]

The clip norm S is not derived from the private data: without ``--clip`` it is the median norm of
the change of a non-private PromptFL upload on a public proxy (the synthetic colour-square dataset
with the same towers and settings, seed 0), measured first. Prints Markdown tables (mean ± std over
seeds of the final round's mean per-client accuracy; the privacy actually spent) and writes them
with the raw numbers to OUT (``dp_evidence.json``, ``table.md``). Finished runs are reused.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path


from fedmoap.cli import parse_fit
from fedmoap.fit import fit


METHODS = {"PromptFL": ["--method", "promptfl"], "PromptFL+FedProx": ["--method", "fedprox"],
           "pFedMoAP": ["--method", "pfedmoap"]}
PROXY = ["--data.source", "synthetic"]


def calibrate(out: Path, overrides: list[str]) -> float:
    """Median norm of a non-private PromptFL upload's change over the first 3 rounds on the
    public proxy (clip 1000 and z 1e-12 only switch on the diagnostics: noise std 1e-9, nothing
    clipped)."""
    cfg, _, _ = parse_fit(["fit", *overrides, "--method", "promptfl", *PROXY, "--dp.mode", "client_upload",
                           "--dp.clip", "1000", "--dp.noise_multiplier", "1e-12", "--fed.rounds", "3"])
    rounds = fit(cfg, out / "proxy-promptfl", progress=False)["rounds"]
    return statistics.median(r["dp_median_norm"] for r in rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[math.inf, 8.0, 1.0])
    ap.add_argument("--clip", type=float, default=None, help="S; default: calibrated on the public proxy")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="rows, in the order they run")
    ap.add_argument("--out", default="runs/dp-evidence")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args()
    out = Path(a.out)
    clip = a.clip if a.clip is not None else calibrate(out, a.overrides)
    print(f"clip norm S = {clip:.4g}", flush=True)
    raw: dict[str, dict[str, list[dict]]] = {}
    for seed in a.seeds:  # seed-major: an interrupted run leaves whole seeds
        for name in a.methods:
            method = METHODS[name]
            for eps in a.epsilons:
                dp = [] if math.isinf(eps) else ["--dp.mode", "client_upload", "--dp.clip", str(clip),
                                                 "--dp.epsilon", f"{eps:g}"]
                run_dir = out / f"{method[1].split('.')[-1].lower()}-eps{eps:g}-seed{seed}"
                cfg, _, _ = parse_fit(["fit", *a.overrides, *method, "--seed", str(seed), *dp])
                t = time.perf_counter()
                rounds = fit(cfg, run_dir, progress=False)["rounds"]
                res = json.loads((run_dir / "results.json").read_text())
                p = res.get("privacy", {})
                row = {"seed": seed, "final": rounds[-1]["mean_acc"],
                       "last5": statistics.mean(r["mean_acc"] for r in rounds[-5:]),
                       "eps_rdp": p.get("eps_rdp"), "eps_prv": p.get("eps_prv"),  # None: no DP
                       "noise_multiplier": p.get("noise_multiplier", 0.0), "steps": p.get("steps"),
                       "clipped": statistics.mean(r["dp_clipped_fraction"] for r in rounds) if p else None,
                       "median_norm": statistics.median(r["dp_median_norm"] for r in rounds) if p else None,
                       "seconds": time.perf_counter() - t, "run_dir": str(run_dir)}
                raw.setdefault(name, {}).setdefault(f"{eps:g}", []).append(row)
                print(f"{name} eps {eps:g} seed {seed}: final {row['final']:.4f} "
                      f"(eps_rdp {row['eps_rdp']}, {row['seconds']:.0f} s)", flush=True)
                write(out, clip, raw, a.epsilons)
    print((out / "table.md").read_text())


def write(out: Path, clip: float, raw: dict, epsilons: list[float]) -> None:
    """table.md and dp_evidence.json from the runs so far."""
    epsilons = sorted(epsilons, reverse=True)  # columns inf, 8, 1 whatever order they ran in
    labels = [f"ε = {e:g}".replace("inf", "∞ (no DP)") for e in epsilons]
    keys = [f"{e:g}" for e in epsilons]
    lines = ["| method | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, cells in raw.items():
        lines.append(f"| {name} | " + " | ".join(_fmt([r["final"] for r in cells.get(k, [])]) for k in keys) + " |")
    lines += ["", "| method, ε | z | uploads (worst client) | ε_RDP / ε_PRV spent | uploads clipped | median ‖Δ‖ |",
              "|---|---|---|---|---|---|"]
    for name, cells in raw.items():
        for k in keys:
            rows = cells.get(k, [])
            if not rows or rows[0]["clipped"] is None:
                continue
            lines.append(f"| {name}, {k} | {rows[0]['noise_multiplier']:.3g} | {rows[0]['steps']} | "
                         f"{max(x['eps_rdp'] for x in rows):.3g} / {max(x['eps_prv'] for x in rows):.3g} | "
                         f"{100 * statistics.mean(x['clipped'] for x in rows):.0f} % | "
                         f"{statistics.median(x['median_norm'] for x in rows):.3g} |")
    seeds = sorted({r["seed"] for cells in raw.values() for rows in cells.values() for r in rows})
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(f"clip norm S = {clip:.4g}; seeds {seeds}\n\n" + "\n".join(lines) + "\n")
    (out / "dp_evidence.json").write_text(json.dumps({"clip": clip, "runs": raw}, indent=1))


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


if __name__ == "__main__":
    main()
