"""Time of one pFedMoAP local step (batch 32, cached image features) with the exact truncated text
path versus the full 77-token context, on a random-weight open_clip model.

    python benchmarks/truncation.py [--arch RN50] [--classes 10] [--steps 10]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config import RunConfig
from fedmoap.methods.base import initial_prompt
from fedmoap.methods.pfedmoap import PFedMoAPClient


def step_time(backbone: OpenCLIPBackbone, classes: int, steps: int, experts: int = 9) -> float:
    cfg = RunConfig()
    names = [f"class {i}" for i in range(classes)]
    client = PFedMoAPClient(backbone, names, cfg)
    client.load_client(0, None)
    client.receive({"global": initial_prompt(backbone, cfg),
                    "experts": torch.randn(experts, cfg.prompt.n_ctx, backbone.ctx_width) * 0.02})
    opt = client.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(32, backbone.embed_dim, generator=gen), dim=-1)
    label = torch.randint(classes, (32,), generator=gen)
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        loss = client.training_step((image, label), 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[2:])[len(times[2:]) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="RN50")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    backbone = OpenCLIPBackbone.build(a.arch, None)
    results = {}
    for truncate in (True, False):
        backbone.truncate = truncate
        results[truncate] = step_time(backbone, a.classes, a.steps)
    print(f"{a.arch} C={a.classes}: step truncated {results[True] * 1e3:.0f} ms, full 77 tokens "
          f"{results[False] * 1e3:.0f} ms, speed-up {results[False] / results[True]:.2f}x "
          f"(median of {a.steps}, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
