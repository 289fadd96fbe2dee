"""fedmoap's speed and memory benchmarks, reported as ratios measured in one run.

    python benchmarks/run.py [--quick] [--json OUT.json] [--work DIR]

1. Local step (``local_step.py``): the pFedMoAP client step, reference-style vs ours vs the floor,
   RN50 and ViT-B-16 (random weights) at C = 10 and 100 classes (``--quick``: RN50, C = 10),
   all on full sequences (``share_prefix`` off), as before the shared-prefix encoder.
   Shared prefix (``prefix.py``): the step with the shared prefix, and the experts' encoding, against
   that full-sequence floor, same cases.
2. Clients at scale (``scale.py``): peak RSS of whole 2-round runs with 10, 100 and 1,000
   clients, all training every round (``--quick``: 10 and 1,000 clients, 1 round, a quarter of
   them training: fewer states, none with downloaded experts). At scale: 10, 100 and 10,000
   clients (``--quick``: 2,000), 10 of them training per round and 10 evaluated per round but
   the last, which evaluates everyone: peak RSS (``ratio_10000_vs_10``) and seconds per round
   before the last (``round_ratio_10000_vs_100``).
3. Round throughput (``scale.py``): seconds per round on 1 vs 2 processes, one thread each.
4. Communication (``communication.py``): bytes per client per round for each method.
5. Vision-prompt step (``vision_step.py``): FedVPT's client step (8 shallow tokens, batch 32,
   C = 10) against the floor (one prompted image-tower forward + backward and the text path), and
   the pixel provider's share; full mode: ViT-B-16 with pFedDC and PEP-FedPT too, and the offline
   ViT; ``--quick`` (CI's contract check): ViT-B-32, one step.
6. Baselines' local steps (``baselines_step.py``, full mode only): each baseline of the paper's
   tables (FedOTP's OT solve included) against the same floor, RN50, C = 10.

Targets (issue 4): ours >= 10x faster than reference at RN50/C=10; ours <= 1.2x the floor;
1,000-client peak <= 1.2x the 10-client one; at 10 participants per round, the 10,000-client
peak <= 1.3x the 10-client one and its round <= 1.2x the 100-client one; 2 processes <= 0.55x one process. Issue 14: the
shared-prefix step <= 0.5x the full-sequence floor at RN50/C=10, <= 0.4x at C=100. Issue 9: the
vision-prompt step <= 1.15x its floor, the provider < 10 % of it; issue 11: pFedDC and PEP-FedPT
steps <= 1.2x the same floor.
Prints a table and writes the JSON contract: {"cases": [...], "prefix": [...], "memory": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines_step
import communication
import local_step
import prefix
import scale
import vision_step

from fedmoap.backbones.openclip import OpenCLIPBackbone

TARGETS = {
    "speedup_vs_reference": 10.0,
    "ratio_to_floor": 1.2,
    "memory_ratio": 1.2,
    "scale_memory_ratio": 1.3,
    "scale_round_ratio": 1.2,
    "throughput_ratio": 0.55,
    "vision_ratio_to_floor": 1.15,
    "provider_share": 0.10,
    "seed_methods_ratio_to_floor": 1.2,
}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fast subset (about 2.5 minutes on 2 CPU cores; the aim is 2)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    quick = a.quick
    cases = (
        [local_step.StepCase("RN50", 10)]
        if quick
        else [local_step.StepCase(arch, c) for arch in ("RN50", "ViT-B-16") for c in (10, 100)]
    )
    with tempfile.TemporaryDirectory(prefix="fedmoap-bench-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print("local step", flush=True)
        for arch in dict.fromkeys(c.arch for c in cases):  # this table keeps the full-sequence path
            local_step.MODELS[arch] = OpenCLIPBackbone.build(arch, None)
            local_step.MODELS[arch].share_prefix = False
        steps = local_step.run(cases, repeats=2 if quick else 5, reference_repeats=1 if quick else 2, bf16=not quick)
        print("shared prefix", flush=True)
        shared = prefix.run(cases, local_step.MODELS, repeats=2 if quick else 5)
        print("vision-prompt step", flush=True)
        vision = (
            [vision_step.run("ViT-B-32", 10, steps=1, repeats=1)]
            if quick
            # CI: the contract
            else [vision_step.run("ViT-B-16", 10, steps=2, repeats=3, methods=("fedvpt", "pfeddc", "pepfedpt"))]
        )
        if not quick:  # the offline ViT (seed methods), if its weights can be built here
            try:
                vision.append(
                    vision_step.run("packaged-vit", 10, steps=2, repeats=3, methods=("fedvpt", "pfeddc", "pepfedpt"))
                )
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                print(f"packaged-vit step skipped: {exc}", flush=True)
        print("communication", flush=True)
        comm = communication.run(local_step.MODELS["RN50"])
        baselines = []
        if not quick:
            print("baselines' local steps", flush=True)
            baselines = baselines_step.run(local_step.MODELS["RN50"])
        local_step.MODELS.clear()
        print("clients at scale", flush=True)
        memory = scale.peak_memory(
            [10, 1000] if quick else [10, 100, 1000],
            rounds=1 if quick else 2,
            work=work,
            participation=0.25 if quick else 1.0,
        )
        memory["ratio_1000_vs_10"] = memory["clients_1000_mb"] / memory["clients_10_mb"]
        big = 2000 if quick else 10000
        at = scale.at_scale([10, 100, big], participants=10, rounds=2 if quick else 3, work=work)
        memory["at_scale"] = at
        memory[f"clients_{big}_mb"] = at[f"clients_{big}_mb"]
        memory[f"ratio_{big}_vs_10"] = at[f"clients_{big}_mb"] / at["clients_10_mb"]
        memory[f"round_ratio_{big}_vs_100"] = at[f"clients_{big}_round_s"] / at["clients_100_round_s"]
        print("round throughput", flush=True)
        throughput = scale.round_time(rounds=2 if quick else 10, work=work)
    result = {
        "quick": quick,
        "cases": steps,
        "prefix": shared,
        "vision": vision,
        "memory": memory,
        "throughput": throughput,
        "communication": comm,
        "baselines": baselines,
        "targets": TARGETS,
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "seconds": time.perf_counter() - t0,
    }
    print(table(result))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))
    return result


def table(r: dict) -> str:
    lines = [
        "",
        "| local step (batch 32, 10 experts; full sequences) | tokens ref/ours | reference ms "
        "| ours ms | floor ms | ours vs reference | ours / floor | in train_locally / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        lines.append(
            f"| {c['arch']}, C = {c['classes']} | {c['tokens_reference']}/{c['tokens_ours']} "
            f"| {c['reference_ms']:.0f} | {c['ours_ms']:.0f} | {c['floor_ms']:.0f} "
            f"| {c['speedup_vs_reference']:.1f}x | {c['ratio_to_floor']:.2f} "
            f"| {c['local_training_ratio_to_floor']:.2f} |"
        )
    lines += [
        "",
        "| vision-prompt step (FedVPT, 8 shallow tokens, batch 32) | ours ms | floor ms "
        "| ours / floor | pixel provider ms | provider share |",
        "|---|---|---|---|---|---|",
    ]
    for v in r.get("vision", []):
        lines.append(
            f"| {v['arch']}, C = {v['classes']}, {v['image_size']} px | {v['ours_ms']:.0f} "
            f"| {v['floor_ms']:.0f} | {v['ratio_to_floor']:.2f} | {v['provider_ms']:.0f} "
            f"| {100 * v['provider_share']:.1f} % |"
        )
    seeds = [(v, name, m) for v in r.get("vision", []) for name, m in v.get("methods", {}).items()]
    if seeds:
        lines += [
            "",
            "| vision-prompt step vs the same floor (batch 32, C = 10) | method | ms | floor ms | method / floor |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {v['arch']}, {v['image_size']} px | {name} | {m['ms']:.0f} | {v['floor_ms']:.0f} "
            f"| {m['ratio_to_floor']:.2f} |"
            for v, name, m in seeds
        ]
    if r.get("baselines"):
        lines += ["", baselines_step.table(r["baselines"])]
    bf16 = [c for c in r["cases"] if "bf16_speedup" in c]
    if bf16:
        lines += [
            "",
            "bf16 autocast on CPU, ours fp32 / bf16 time: "
            + ", ".join(f"{c['arch']} C={c['classes']} {c['bf16_speedup']:.2f}x" for c in bf16),
        ]
    lines.append(prefix.table(r["prefix"]))
    m = r["memory"]
    at = m.get("at_scale", {})
    counts = sorted(int(k.split("_")[1]) for k in m if k.startswith("clients_") and k.endswith("_mb") and k not in at)
    lines += [
        "",
        "| clients | " + " | ".join(str(n) for n in counts) + " | 1,000 / 10 |",
        "|---|" + "---|" * (len(counts) + 1),
        "| peak RSS MB | "
        + " | ".join(f"{m[f'clients_{n}_mb']:.0f}" for n in counts)
        + f" | {m['ratio_1000_vs_10']:.3f} |",
    ]
    if "client_state_kb" in m:
        lines.append(f"(one client's state file: {m['client_state_kb']:.0f} KB on disk)")
    if at:
        scaled = sorted(int(k.split("_")[1]) for k in at if k.startswith("clients_") and k.endswith("_mb"))
        big = scaled[-1]
        lines += [
            "",
            f"{at['participants']:.0f} clients training per round, {at['rounds']:.0f} rounds:",
            "| clients | " + " | ".join(str(n) for n in scaled) + f" | {big:,} / 10 |",
            "|---|" + "---|" * (len(scaled) + 1),
            "| peak RSS MB | "
            + " | ".join(f"{at[f'clients_{n}_mb']:.0f}" for n in scaled)
            + f" | {m[f'ratio_{big}_vs_10']:.3f} |",
            "| s per round | "
            + " | ".join(f"{at[f'clients_{n}_round_s']:.2f}" for n in scaled)
            + f" | {m[f'round_ratio_{big}_vs_100']:.2f} (/ 100) |",
            "| last round s | " + " | ".join(f"{at[f'clients_{n}_last_s']:.1f}" for n in scaled) + " | |",
        ]
    t = r["throughput"]
    lines += [
        "",
        f"round time: 1 process {t['procs_1_s']:.2f} s, 2 processes {t['procs_2_s']:.2f} s -> {t['ratio_2_vs_1']:.2f}x",
        "",
        "| method | down bytes/client/round | up | down in 16x512 prompts | up |",
        "|---|---|---|---|---|",
    ]
    for c in r["communication"]:
        lines.append(
            f"| {c['method']} | {c['down_bytes']:,.0f} | {c['up_bytes']:,.0f} "
            f"| {c['down_in_prompts']:.0f} | {c['up_in_prompts']:.0f} |"
        )
    lines.append(f"\n({r['seconds']:.0f} s, torch {r['machine']['torch']}, {r['machine']['threads']} threads)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
