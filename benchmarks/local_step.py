"""One pFedMoAP client training step (batch 32) in three modes, on the same model in one run.

- ``reference``: what the reference code pays at every step: the frozen image encoder on the
  batch of images, and the local prompt's C class prompts through the text tower at the full
  77-token context (forward and backward). Its non-local experts' text features are computed once
  per round, as ours are, so neither mode times them.
- ``ours``: fedmoap's step: cached image features, prompts truncated exactly to the longest
  class prompt (same gating, same loss).
- ``local training``: ``fedmoap.federation.local.train_locally`` over 3 batches (shuffling, batching, the
  lr schedule, optimizer creation), per step: what stands between a real round and the step.
- ``floor``: one text-tower forward and backward over the C class prompts of the local context at
  the truncated length; no method can train its prompt for less.

Models have random weights: timing does not depend on the values.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import TrainArgs
from fedmoap.federation.local import train_locally
from fedmoap.federation.rounds import default_fabric
from fedmoap.methods.base import RunContext
from fedmoap.methods.pfedmoap import PFedMoAP, PFedMoAPClient
from fedmoap.methods.prompts import initial_prompt

BATCH = 32


@dataclass
class StepCase:
    arch: str
    classes: int
    experts: int = 9
    """Non-local experts (the paper's default K = 9)."""


def median_seconds(step: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def paired(steps: list[Callable[[], None]], repeats: int) -> list[float]:
    """Median seconds of each step, the steps run in turn ``repeats`` times after one warm-up."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(repeats + 1):
        for i, step in enumerate(steps):
            t = time.perf_counter()
            step()
            if r:
                times[i].append(time.perf_counter() - t)
    return [sorted(ts)[len(ts) // 2] for ts in times]


RUN = RunContext(seed=0, num_clients=1, train=TrainArgs(), keep_optimizer_state=True)


def make_client(backbone: OpenCLIPBackbone, case: StepCase) -> tuple[PFedMoAPClient, torch.Tensor]:
    method = PFedMoAP()
    client = PFedMoAPClient(method, backbone, [f"class number {i}" for i in range(case.classes)], RUN)
    client.load_client(0, None)
    gen = torch.Generator().manual_seed(0)
    experts = torch.randn(case.experts, method.n_ctx, backbone.ctx_width, generator=gen) * 0.02
    client.receive({"prompt": initial_prompt(backbone, method, 0), "experts": experts})
    _ = client.expert_text  # computed once per round, not per step
    return client, experts


def time_modes(
    backbone: OpenCLIPBackbone, case: StepCase, repeats: int, reference_repeats: int, bf16: bool = False
) -> dict:
    """Median seconds per step of each mode (and of ``ours`` under CPU bf16 autocast if asked)."""
    gen = torch.Generator().manual_seed(1)
    size = backbone.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(BATCH, 3, size, size, generator=gen)
    labels = torch.randint(case.classes, (BATCH,), generator=gen)
    with torch.no_grad():
        cached = F.normalize(backbone.encode_image(images), dim=-1)

    def make(truncate: bool):
        backbone.truncate = truncate  # read when the client builds its prompt slots
        client, experts = make_client(backbone, case)
        return client, experts, client.configure_optimizers()["optimizer"]

    def train_step(client, optim, image: torch.Tensor, autocast=None) -> None:
        with autocast or nullcontext():
            loss = client.training_step({"features": image, "label": labels})
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    ref, experts, ref_optim = make(False)

    def reference() -> None:
        with torch.no_grad():
            image = F.normalize(backbone.encode_image(images), dim=-1)
        train_step(ref, ref_optim, image)

    ours, _, optim = make(True)

    def floor() -> None:
        backbone.encode_prompts(ours.slots, ours.ctx).sum().backward()
        ours.ctx.grad = None

    steps = 3
    many = F.normalize(torch.randn(steps * BATCH, cached.shape[1], generator=gen), dim=-1)
    many_labels = torch.randint(case.classes, (steps * BATCH,), generator=gen)
    fabric = default_fabric()

    def batches(epoch: int):
        order = torch.randperm(len(many), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(many), BATCH):
            idx = order[start : start + BATCH]
            yield {"features": many[idx], "label": many_labels[idx]}

    def local_training() -> None:  # what a client's round costs: optimizer, batching, schedule
        train_locally(ours, batches, 1, fabric)

    # the image encoder ran once above: the reference mode needs no further warm-up step
    # ours and the floor alternate, so that a slow spell of the machine hits both alike
    pair = paired([lambda: train_step(ours, optim, cached), floor], repeats)
    out = {
        "reference": median_seconds(reference, reference_repeats, warmup=0),
        "local_training_per_step": median_seconds(local_training, 1, warmup=0) / steps,
        "ours": pair[0],
        "floor": pair[1],
    }
    if bf16:
        out["ours_bf16"] = median_seconds(
            lambda: train_step(ours, optim, cached, torch.autocast("cpu", dtype=torch.bfloat16)), repeats
        )
    out["tokens"] = (ref.slots.seq_len, ours.slots.seq_len)
    return out


MODELS: dict[str, OpenCLIPBackbone] = {}
"""The random-weight models built by :func:`run` (always including RN50), for reuse."""


def run(cases: list[StepCase], repeats: int, reference_repeats: int, bf16: bool) -> list[dict]:
    rows, models = [], MODELS
    for case in cases:
        if case.arch not in models:
            torch.manual_seed(0)
            models[case.arch] = OpenCLIPBackbone.build(case.arch, None)
        backbone = models[case.arch]
        t = time_modes(backbone, case, repeats, reference_repeats, bf16)
        row = {
            "name": f"local_step/{case.arch}/C={case.classes}",
            "arch": case.arch,
            "classes": case.classes,
            "experts": case.experts + 1,
            "reference_ms": 1e3 * t["reference"],
            "ours_ms": 1e3 * t["ours"],
            "floor_ms": 1e3 * t["floor"],
            "speedup_vs_reference": t["reference"] / t["ours"],
            "ratio_to_floor": t["ours"] / t["floor"],
            "local_training_step_ms": 1e3 * t["local_training_per_step"],
            "local_training_ratio_to_floor": t["local_training_per_step"] / t["floor"],
            "tokens_reference": t["tokens"][0],
            "tokens_ours": t["tokens"][1],
        }
        if "ours_bf16" in t:
            row["ours_bf16_ms"] = 1e3 * t["ours_bf16"]
            row["bf16_speedup"] = t["ours"] / t["ours_bf16"]
        rows.append(row)
        backbone.truncate = True
        print(
            f"  {row['name']}: reference {row['reference_ms']:.0f} ms, ours {row['ours_ms']:.0f} ms, "
            f"floor {row['floor_ms']:.0f} ms",
            flush=True,
        )
    return rows
