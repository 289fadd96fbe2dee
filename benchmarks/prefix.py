"""The shared-prefix text encoder against the full-sequence floor, on the same model in one run.

- ``full-sequence floor``: one text-tower forward and backward over the C class prompts of the local
  context at the exact truncated length, every prompt's whole sequence (``share_prefix = False``):
  the floor of ``local_step.py`` before the shared prefix, the one docs/speed.md's table reports.
- ``text path``: the same forward and backward with the start token and context encoded once.
- ``step``: the whole pFedMoAP client step with the shared prefix (batch 32 of cached image
  features; the 9 experts' text features fixed, as within a round).
- ``experts``: the 9 experts' text features, without gradient, once per round, shared prefix vs
  full sequences.

The step, the floor and the text path are timed in turn (median of ``repeats``), as are the two
expert encodings, so that a slow spell of the machine hits all alike. Random weights: timing does
not depend on the values.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from local_step import BATCH, StepCase, make_client

from fedmoap.backbones.openclip import OpenCLIPBackbone

TARGETS = {"RN50/C=10": 0.5, "C=100": 0.4}
"""Step / full-sequence floor (issue 14): at most 0.5 at RN50, C = 10; 0.4 at C = 100."""


@contextmanager
def full_sequences(backbone: OpenCLIPBackbone) -> Iterator[None]:
    """Encode prompts without the shared prefix inside the block."""
    backbone.share_prefix = False
    try:
        yield
    finally:
        backbone.share_prefix = True


def alternate(steps: list[Callable[[], None]], repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of each step, the steps run in turn ``warmup + repeats`` times."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + repeats):
        for i, step in enumerate(steps):
            t = time.perf_counter()
            step()
            if r >= warmup:
                times[i].append(time.perf_counter() - t)
    return [sorted(ts)[len(ts) // 2] for ts in times]


def time_case(backbone: OpenCLIPBackbone, case: StepCase, repeats: int, expert_repeats: int) -> dict:
    """Median seconds of the step, the text path, the floor and the two expert encodings."""
    backbone.share_prefix, backbone.truncate = True, True
    client, experts = make_client(backbone, case)
    optim = client.configure_optimizers()["optimizer"]
    gen = torch.Generator().manual_seed(1)
    images = F.normalize(torch.randn(BATCH, backbone.embed_dim, generator=gen), dim=-1)
    labels = torch.randint(case.classes, (BATCH,), generator=gen)

    def step() -> None:
        loss = client.training_step({"features": images, "label": labels})
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def text() -> None:
        backbone.encode_prompts(client.slots, client.ctx).sum().backward()
        client.ctx.grad = None

    def floor() -> None:
        with full_sequences(backbone):
            text()

    def encode_experts() -> None:
        with torch.no_grad():
            backbone.encode_prompts(client.slots, experts)

    def encode_experts_full() -> None:
        with full_sequences(backbone):
            encode_experts()

    out = dict(zip(("step", "floor", "text"), alternate([step, floor, text], repeats)))
    out.update(
        zip(
            ("experts", "experts_full"),
            alternate([encode_experts, encode_experts_full], expert_repeats, warmup=1 if case.classes <= 10 else 0),
        )
    )
    out["tokens"] = client.slots.seq_len
    out["own_tokens"] = client.slots.suffix.shape[1]
    return out


def run(cases: list[StepCase], models: dict[str, OpenCLIPBackbone], repeats: int = 5) -> list[dict]:
    """One row per case; ``models`` holds the random-weight backbones by architecture (built here
    if missing)."""
    rows = []
    for case in cases:
        if case.arch not in models:
            models[case.arch] = OpenCLIPBackbone.build(case.arch, None)
        t = time_case(models[case.arch], case, repeats, expert_repeats=3 if case.classes <= 10 else 1)
        key = f"{case.arch}/C={case.classes}"
        target = TARGETS.get(key, TARGETS["C=100"] if case.classes >= 100 else None)
        row = {
            "name": f"prefix/{key}",
            "arch": case.arch,
            "classes": case.classes,
            "experts": case.experts,
            "tokens_full": t["tokens"],
            "tokens_own": t["own_tokens"],
            "floor_ms": 1e3 * t["floor"],
            "text_ms": 1e3 * t["text"],
            "step_ms": 1e3 * t["step"],
            "text_ratio_to_floor": t["text"] / t["floor"],
            "step_ratio_to_floor": t["step"] / t["floor"],
            "experts_ms": 1e3 * t["experts"],
            "experts_full_ms": 1e3 * t["experts_full"],
            "experts_ratio": t["experts"] / t["experts_full"],
            "target_step_ratio": target,
        }
        rows.append(row)
        print(
            f"  {row['name']}: full-sequence floor {row['floor_ms']:.0f} ms, text path "
            f"{row['text_ms']:.0f} ms, step {row['step_ms']:.0f} ms ({row['step_ratio_to_floor']:.2f}x); "
            f"experts {row['experts_ms']:.0f} vs {row['experts_full_ms']:.0f} ms",
            flush=True,
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "",
        "| shared prefix (batch 32, 1 + 9 experts) | tokens full/own | full-sequence floor ms "
        "| text path ms | step ms | text / floor | step / floor (target) | experts ms shared/full "
        "| ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = f" (<= {r['target_step_ratio']})" if r["target_step_ratio"] else ""
        lines.append(
            f"| {r['arch']}, C = {r['classes']} | {r['tokens_full']}/{r['tokens_own']} "
            f"| {r['floor_ms']:.0f} | {r['text_ms']:.0f} | {r['step_ms']:.0f} "
            f"| {r['text_ratio_to_floor']:.2f} | **{r['step_ratio_to_floor']:.2f}**{target} "
            f"| {r['experts_ms']:.0f}/{r['experts_full_ms']:.0f} | {r['experts_ratio']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json
    import platform
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="RN50, C = 10 only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args()
    cases = (
        [StepCase("RN50", 10)] if a.quick else [StepCase(arch, c) for arch in ("RN50", "ViT-B-16") for c in (10, 100)]
    )
    rows = run(cases, {}, a.repeats)
    print(table(rows))
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "prefix": rows,
                    "machine": {
                        "torch": torch.__version__,
                        "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(),
                    },
                },
                indent=1,
            )
        )
