"""A vision-prompt client's local step (FedVPT: 8 shallow prompt tokens in the image tower plus a
CoOp text prompt), against the floor, and the pixel provider's share of the step.

- ``ours``: :func:`fedmoap.local.train_locally` over one epoch of batches from the real pixel
  provider (:class:`~fedmoap.federated_data.FederatedData`: uint8 images, random resized crop +
  flip on tensors, normalisation), per step: batching, augmentation, forward, backward, SGD step.
- ``floor``: one prompted image-tower forward and backward on ready-made normalised images plus
  the text path (the C class prompts' forward and backward): what any such method must compute.
- ``provider``: producing the same batches alone (the augmentation's cost), per step.

Random weights: timing does not depend on the values.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config import TrainArgs
from fedmoap.federated_data import FederatedData, Inputs
from fedmoap.local import train_locally
from fedmoap.methods.base import RunContext
from fedmoap.methods.fedvpt import FedVPT
from fedmoap.rounds import default_fabric

BATCH = 32
TOKENS = 8


def provider(backbone: OpenCLIPBackbone, images: int, classes: int) -> FederatedData:
    """One client holding ``images`` random uint8 images in the pixel provider."""
    size = backbone.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (images, 3, size, size), generator=gen, dtype=torch.uint8).numpy()
    labels = torch.randint(classes, (images,), generator=gen)
    train = Inputs(labels, pixels=pixels, pixel_pos=np.arange(images))
    pos = [torch.arange(images)]
    return FederatedData([str(c) for c in range(classes)], train, train, pos, pos, seed=0,
                         backbone=backbone)


def run(arch: str = "ViT-B-16", classes: int = 10, steps: int = 2, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    backbone = OpenCLIPBackbone.build(arch, None)
    data = provider(backbone, steps * BATCH, classes)
    method = FedVPT(vision_tokens=TOKENS)
    run_ctx = RunContext(0, 1, TrainArgs(local_epochs=1, batch_size=BATCH), keep_optimizer_state=True)
    client = method.build_client(backbone, [f"class number {i}" for i in range(classes)], run_ctx)
    client.load_client(0, None)
    fabric = default_fabric()
    batches = data.train_batches(0, 1, BATCH)

    ready = next(iter(batches(0)))
    prompt = client.vision.detach()[0].clone().requires_grad_(True)
    ctx = client.ctx.detach().clone().requires_grad_(True)

    def floor() -> None:
        image = F.normalize(backbone.encode_image_prompted(ready["pixels"], [{0: prompt}]), dim=-1)
        text = F.normalize(backbone.encode_prompts(client.slots, ctx), dim=-1)
        (image @ text.t()).sum().backward()
        prompt.grad = ctx.grad = None

    def ours() -> None:
        train_locally(client, batches, 1, fabric)

    def batches_only() -> None:
        for _ in batches(0):
            pass

    times: dict[str, list[float]] = {"ours": [], "floor": [], "provider": []}
    for r in range(repeats + 1):  # alternate, so that a slow spell of the machine hits all alike
        for name, fn, per in (("ours", ours, steps), ("floor", floor, 1), ("provider", batches_only, steps)):
            t = time.perf_counter()
            fn()
            if r:
                times[name].append((time.perf_counter() - t) / per)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"name": f"vision_step/{arch}/C={classes}", "arch": arch, "classes": classes,
            "batch": BATCH, "prompt_tokens": TOKENS, "image_size": backbone.image_size,
            "ours_ms": 1e3 * med["ours"], "floor_ms": 1e3 * med["floor"],
            "provider_ms": 1e3 * med["provider"], "ratio_to_floor": med["ours"] / med["floor"],
            "provider_share": med["provider"] / med["ours"]}


if __name__ == "__main__":
    print(run())
