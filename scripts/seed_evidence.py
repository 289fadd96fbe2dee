"""Evidence for pFedDC and PEP-FedPT on the offline ViT (``packaged-vit``), over seeds, each seed's
split identical for every method of a split:

- label skew: Fashion-MNIST, 5 clients, Dirichlet(0.1) over labels, 8 shots per class and client;
- domain shift: ``fashion-mnist-styles`` (five rendering styles), one client per style (5
  clients, all ten classes each), 4 shots per class and client;

both with 60 test images per client following its training mix, 10 rounds of 2 local epochs,
batch 16, SGD lr 0.01, full participation, 112 px. Methods: pFedDC vs PromptFL vs pFedMoAP vs
CoOp (the last three on cached image features of the same backbone), and PEP-FedPT vs FedAvg-VPT
vs local VPT; PEP-FedPT's final model is also evaluated with the uniform prior (no client context).

    python scripts/seed_evidence.py [--seeds 0 1 2] [--out runs/seed-evidence] [--splits label domain]
        [--methods NAME ...] [-- extra fit overrides]

Resumable: every finished run is recorded in OUT/runs.json (with its own wall time) and skipped
when the script is run again; an interrupted run resumes from its checkpoint. Writes OUT/runs.json
and OUT/tables.md (mean ± sample std over seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from fedmoap.cli import parse_fit
from fedmoap.fit import fit

COMMON = ["--model.arch", "packaged-vit", "--model.image_size", "112", "--data.num_clients", "5",
          "--data.max_test_per_client", "60", "--data.num_views", "0", "--fed.rounds", "10",
          "--fed.participation", "1.0", "--train.local_epochs", "2", "--train.batch_size", "16",
          "--train.lr", "0.01", "--fabric.threads", "2", "--fabric.accelerator", "cpu"]
SPLITS = {
    "label": ["--data.source", "fashion-mnist", "--data.partition", "dirichlet", "--data.alpha", "0.1",
              "--data.shots", "8"],
    "domain": ["--data.source", "fashion-mnist-styles", "--data.domain_column", "domain",
               "--data.partition", "domain_dirichlet", "--data.shots", "4"],
}
METHODS = {  # name -> fit arguments; the first four share a table, the next three the other
    "pFedDC": ["--method", "pfeddc"],
    "PromptFL": ["--method", "promptfl"],
    "pFedMoAP": ["--method", "pfedmoap"],
    "CoOp": ["--method", "coop"],
    "PEP-FedPT": ["--method", "pepfedpt"],
    "FedAvg-VPT": ["--method", "fedavg_vpt"],
    "Local VPT": ["--method", "local_vpt"],
    # ablations (run with --methods NAME ...), each one part of a seed method switched off or the
    # budget raised, to locate where the method loses to its baselines
    "pFedDC, text only": ["--method", "pfeddc", "--method.vision", "false"],
    "pFedDC, text only, fusion sum": ["--method", "pfeddc", "--method.vision", "false",
                                      "--method.fusion", "sum"],
    "pFedDC, no local prompts (F = G)": ["--method", "pfeddc", "--method.fusion", "none"],
    "pFedDC, fusion sum": ["--method", "pfeddc", "--method.fusion", "sum"],
    "pFedDC, fusion sum, vision init N(0, 0.02²)": ["--method", "pfeddc", "--method.fusion", "sum",
                                                    "--method.vision_init", "normal"],
    "pFedDC, 30 rounds": ["--method", "pfeddc", "--fed.rounds", "30"],
    "PEP-FedPT, 30 rounds": ["--method", "pepfedpt", "--fed.rounds", "30"],
    "FedAvg-VPT, 30 rounds": ["--method", "fedavg_vpt", "--fed.rounds", "30"],
}
DEFAULT_METHODS = list(METHODS)[:7]
CLIP_TABLE = ["pFedDC", "PromptFL", "pFedMoAP", "CoOp"]
VPT_TABLE = ["PEP-FedPT", "PEP-FedPT (uniform prior)", "FedAvg-VPT", "Local VPT"]
ABLATIONS = list(METHODS)[7:]


def run_dir(out: Path, split: str, name: str, seed: int) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return out / split / f"{slug}-seed{seed}"


def metrics(rounds: list[dict]) -> dict:
    rounds = [r for r in rounds if r.get("mean_acc") is not None]
    last5 = rounds[-5:]
    out = {}
    for key in ("mean_acc", "worst_acc", "pooled_acc"):
        out[f"final_{key}"] = rounds[-1][key]
        out[f"last5_{key}"] = sum(r[key] for r in last5) / len(last5)
    return out


def evaluate_with(path: Path, **knobs) -> dict:
    """Accuracies of a finished run's final model re-evaluated with other method knobs (here
    PEP-FedPT's ``prior: uniform``): nothing of the run is changed."""
    from fedmoap.backbones import build_backbone
    from fedmoap.checkpoint import load_latest
    from fedmoap.config import config_dict
    from fedmoap.data.sources import load_source
    from fedmoap.data.split import load_split
    from fedmoap.features import FeatureCache
    from fedmoap.fit import DEFAULT_CACHE, config_digest
    from fedmoap.federated_data import gather_inputs
    from fedmoap.methods.base import RunContext
    from fedmoap.pixels import PixelCache
    from fedmoap.results import round_record
    from fedmoap.rounds import Federation, Schedule, default_fabric
    from fedmoap.store import ClientStore

    cfg, _, _ = parse_fit(["fit", "--config", str(path / "config.yaml")])
    ckpt = load_latest(path, config_digest(config_dict(cfg)))
    method = dataclasses.replace(cfg.method, **knobs)
    if cfg.fabric.threads:
        torch.set_num_threads(cfg.fabric.threads)
    backbone = build_backbone(cfg.model, cfg.seed)
    source = load_source(cfg.data)
    split = load_split(path / "split.json", source, cfg.data.num_clients)
    root = Path(cfg.data.feature_cache or DEFAULT_CACHE / "features").expanduser()
    inputs = method.required_inputs()
    data = gather_inputs(inputs, cfg.data, source, split,
                         FeatureCache(root, backbone) if "features" in inputs else None, None,
                         PixelCache(root, backbone) if "pixels" in inputs else None, cfg.seed)
    data.backbone = backbone
    keep = {"keep": True, "reset": False}.get(cfg.train.optimizer_state, method.keep_optimizer_state)
    run = RunContext(cfg.seed, cfg.data.num_clients, cfg.train, keep)
    module = method.build_client(backbone, source.classnames, run)
    server = method.build_server(module.global_init(), run)
    server.load_state_dict(ckpt["server"])
    store = ClientStore(path / "clients")
    store.load_state_dict(ckpt["store"])
    t = cfg.train
    schedule = Schedule(cfg.seed, cfg.data.num_clients, cfg.fed.participation, t.local_epochs,
                        t.batch_size, t.eval_batch_size, 1, cfg.fed.rounds)
    fed = Federation(method, module, server, store, data, schedule, default_fabric())
    counts = fed.evaluate(list(range(cfg.data.num_clients)))
    return round_record(ckpt["round"], counts, [], 0, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/seed-evidence"))
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                    help="default: the seven methods; the ablations are asked by name")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    book = a.out / "runs.json"
    done = json.loads(book.read_text()) if book.exists() else {}
    for split in a.splits:
        for seed in a.seeds:
            for name in a.methods:
                key = f"{split}/{name}/{seed}"
                if key in done:
                    continue
                path = run_dir(a.out, split, name, seed)
                argv = ["fit", *COMMON, *SPLITS[split], *METHODS[name], "--seed", str(seed), *a.overrides]
                cfg, _, _ = parse_fit(argv)
                t0 = time.perf_counter()
                res = fit(cfg, path, progress=False)
                entry = {"split": split, "method": name, "seed": seed, "run_dir": str(path),
                         "seconds": time.perf_counter() - t0, "setup_seconds": res["setup_seconds"],
                         "round_seconds": res["round_seconds"], **metrics(res["rounds"]),
                         "command": "fedmoap " + " ".join(argv[:1] + [f"'{x}'" if " " in x else x for x in argv[1:]])
                                    + f" --run_dir {path}"}
                if name == "PEP-FedPT":
                    t1 = time.perf_counter()
                    uni = evaluate_with(path, prior="uniform")
                    entry["uniform_prior"] = {k: uni[k] for k in ("mean_acc", "worst_acc", "pooled_acc")}
                    entry["seconds"] += time.perf_counter() - t1
                done[key] = entry
                book.write_text(json.dumps(done, indent=1))
                print(f"{key}: final mean {entry['final_mean_acc']:.4f} worst {entry['final_worst_acc']:.4f} "
                      f"pooled {entry['final_pooled_acc']:.4f} ({entry['seconds']:.0f} s)", flush=True)
    text = tables(done, a.seeds)
    (a.out / "tables.md").write_text(text)
    print(text)


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}"


def tables(done: dict, seeds: list[int]) -> str:
    lines = []
    for split in SPLITS:
        rows = [e for e in done.values() if e["split"] == split and e["seed"] in seeds]
        if not rows:
            continue
        lines += [f"### {split} split", "",
                  "| method | final mean acc (%) | last-5 mean acc (%) | final worst (%) | final pooled (%) |",
                  "|---|---|---|---|---|"]
        for name in CLIP_TABLE:
            r = [e for e in rows if e["method"] == name]
            if r:
                lines.append(f"| {name} | {_fmt([e['final_mean_acc'] for e in r])} | "
                             f"{_fmt([e['last5_mean_acc'] for e in r])} | "
                             f"{_fmt([e['final_worst_acc'] for e in r])} | "
                             f"{_fmt([e['final_pooled_acc'] for e in r])} |")
        lines += ["", "| method | final mean (%) | final worst (%) | final pooled (%) | last-5 mean (%) "
                  "| last-5 worst (%) | last-5 pooled (%) |", "|---|---|---|---|---|---|---|"]
        for name in VPT_TABLE:
            if name.endswith("(uniform prior)"):
                r = [e["uniform_prior"] for e in rows if e["method"] == "PEP-FedPT" and "uniform_prior" in e]
                if r:
                    lines.append(f"| {name}, final model | {_fmt([e['mean_acc'] for e in r])} | "
                                 f"{_fmt([e['worst_acc'] for e in r])} | {_fmt([e['pooled_acc'] for e in r])} "
                                 "| – | – | – |")
                continue
            r = [e for e in rows if e["method"] == name]
            if r:
                lines.append("| " + " | ".join([name] + [_fmt([e[k] for e in r]) for k in (
                    "final_mean_acc", "final_worst_acc", "final_pooled_acc", "last5_mean_acc",
                    "last5_worst_acc", "last5_pooled_acc")]) + " |")
        r = [e for e in rows if e["method"] in ABLATIONS]
        if r:
            lines += ["", "| ablation | final mean (%) | final worst (%) | last-5 mean (%) |", "|---|---|---|---|"]
            for name in ABLATIONS:
                a = [e for e in r if e["method"] == name]
                if a:
                    lines.append("| " + " | ".join([name] + [_fmt([e[k] for e in a]) for k in (
                        "final_mean_acc", "final_worst_acc", "last5_mean_acc")]) + " |")
        secs = sum(e["seconds"] for e in rows)
        lines += ["", f"({len(rows)} runs, {secs / 60:.0f} min in all; seeds {sorted({e['seed'] for e in rows})})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
