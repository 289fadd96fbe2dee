"""Vision-prompt clients' local steps against the floor, and the pixel provider's share of the step.

Methods (``run(..., methods=...)``): FedVPT (8 shallow prompt tokens in the image tower plus a
CoOp text prompt), pFedDC (global + local text and vision prompts, two cross-attention fusions,
8 fused vision tokens and a 16-token text prompt) and PEP-FedPT (10 shared tokens at the input, 4
class-mixed tokens at block round(L/2), a linear head, mixing weights from cached features, no
text path); the 2025-26 and FLiP vision methods at their paper configs: FedMGP (5 groups of text
and vision prompts), FedMVP (a PromptFormer over the patch embeddings, the frozen feature of the
flipped image), pFedMMA (adapters on blocks 5-12 of both towers), MaPLe and IVLP (deep prompts
over 9 blocks of both towers) and PromptSRC (IVLP plus a frozen pass for its consistency terms);
all timed in turn against one floor in the same run.

- ``ours``: :func:`fedmoap.federation.local.train_locally` over one epoch of batches from the real pixel
  provider (:class:`~fedmoap.inputs.federated_data.FederatedData`: uint8 images, random resized crop +
  flip on tensors, normalisation), per step: batching, augmentation, forward, backward, SGD step.
- ``floor``: one prompted image-tower forward and backward on ready-made normalised images plus
  the text path (the C class prompts' forward and backward): what any such method must compute.
- ``provider``: producing the same batches alone (the augmentation's cost), per step.

Random weights: timing does not depend on the values.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedmoap.backbones import build_backbone
from fedmoap.config.sections import ModelArgs, TrainArgs
from fedmoap.federation.local import train_locally
from fedmoap.federation.rounds import default_fabric
from fedmoap.inputs.federated_data import FederatedData, Inputs
from fedmoap.methods.base import RunContext
from fedmoap.methods.fedmgp import FedMGP
from fedmoap.methods.fedmvp import FedMVP
from fedmoap.methods.fedvpt import FedVPT
from fedmoap.methods.maple import MaPLe
from fedmoap.methods.pepfedpt import PEPFedPT
from fedmoap.methods.pfeddc import PFedDC
from fedmoap.methods.pfedmma import PFedMMA
from fedmoap.methods.promptsrc import PromptSRC

BATCH = 32
TOKENS = 8
METHODS = {
    "fedvpt": lambda: FedVPT(vision_tokens=TOKENS),
    "pfeddc": lambda: PFedDC(),
    "pepfedpt": lambda: PEPFedPT(),
    "fedmgp": lambda: FedMGP(),
    "fedmvp": lambda: FedMVP(),
    "pfedmma": lambda: PFedMMA(),
    "maple": lambda: MaPLe(),
    "ivlp": lambda: FedVPT(
        n_ctx=4, ctx_init="a photo of a", template="{}.", vision_tokens=4, vision_depth=9, text_depth=9
    ),
    "promptsrc": lambda: PromptSRC(),
}
"""Each method at its defaults, which are its paper config (pFedDC: 16 text tokens, 8 vision
tokens; PEP-FedPT: 10 + 4 tokens); IVLP is FedVPT at configs/paper/methods/ivlp.yaml."""


def provider(backbone, images: int, classes: int) -> FederatedData:
    """One client holding ``images`` random uint8 images in the pixel provider (and random
    L2-normalised cached features, which PEP-FedPT's mixing weights read)."""
    size = backbone.image_size
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (images, 3, size, size), generator=gen, dtype=torch.uint8).numpy()
    labels = torch.randint(classes, (images,), generator=gen)
    features = F.normalize(torch.randn(1, images, backbone.embed_dim, generator=gen), dim=-1)
    train = Inputs(labels, features=features, pixels=pixels, pixel_pos=np.arange(images))
    pos = [torch.arange(images)]
    return FederatedData([str(c) for c in range(classes)], train, train, pos, pos, seed=0, backbone=backbone)


def client_for(name: str, backbone, classes: int, data: FederatedData):
    run_ctx = RunContext(0, 1, TrainArgs(local_epochs=1, batch_size=BATCH), keep_optimizer_state=True)
    client = METHODS[name]().build_client(backbone, [f"class number {i}" for i in range(classes)], run_ctx)
    client.load_client(0, None)
    if name == "pepfedpt":  # the set-up pass: this client's prior, prototypes from its class means
        with torch.no_grad():
            stats = client.statistics(data.plain_train_batches(0, BATCH))
            client.prototypes.copy_(stats["sum"] / stats["count"].clamp_min(1).unsqueeze(1))
    return client


def run(
    arch: str = "ViT-B-16", classes: int = 10, steps: int = 2, repeats: int = 3, methods: tuple[str, ...] = ("fedvpt",)
) -> dict:
    torch.manual_seed(0)
    backbone = build_backbone(ModelArgs(arch=arch))
    data = provider(backbone, steps * BATCH, classes)
    clients = {name: client_for(name, backbone, classes, data) for name in methods}
    fabric = default_fabric()
    batches = data.train_batches(0, 1, BATCH)

    ready = next(iter(batches(0)))
    floor_client = clients.get("fedvpt") or client_for("fedvpt", backbone, classes, data)
    prompt = floor_client.vision.detach()[0].clone().requires_grad_(True)
    ctx = floor_client.ctx.detach().clone().requires_grad_(True)

    def floor() -> None:
        image = F.normalize(backbone.encode_image_prompted(ready["pixels"], [{0: prompt}]), dim=-1)
        text = F.normalize(backbone.encode_prompts(floor_client.slots, ctx), dim=-1)
        (image @ text.t()).sum().backward()
        prompt.grad = ctx.grad = None

    def train(client) -> Callable[[], None]:
        return lambda: train_locally(client, batches, 1, fabric)

    def batches_only() -> None:
        for _ in batches(0):
            pass

    timed = [(name, train(c), steps) for name, c in clients.items()]
    timed += [("floor", floor, 1), ("provider", batches_only, steps)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in timed}
    for r in range(repeats + 1):  # alternate, so that a slow spell of the machine hits all alike
        for name, fn, per in timed:
            t = time.perf_counter()
            fn()
            if r:
                times[name].append((time.perf_counter() - t) / per)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    first = methods[0]
    return {
        "name": f"vision_step/{arch}/C={classes}",
        "arch": arch,
        "classes": classes,
        "batch": BATCH,
        "prompt_tokens": TOKENS,
        "image_size": backbone.image_size,
        "ours_ms": 1e3 * med[first],
        "floor_ms": 1e3 * med["floor"],
        "provider_ms": 1e3 * med["provider"],
        "ratio_to_floor": med[first] / med["floor"],
        "provider_share": med["provider"] / med[first],
        "methods": {name: {"ms": 1e3 * med[name], "ratio_to_floor": med[name] / med["floor"]} for name in methods},
    }


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="ViT-B-16", help="open_clip ViT (random weights) or packaged-vit")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(json.dumps(run(a.arch, a.classes, a.steps, a.repeats, tuple(a.methods)), indent=1))
