"""CoCoOp (Zhou et al., CVPR 2022), federated by FedAvg as FLiP does: a context conditioned on
each image by a small meta-network.

Client (reference: KaiyangZhou/CoOp ``trainers/cocoop.py``): context P (n_ctx x W) and a
meta-network pi: Linear(D, D/16) -> ReLU -> Linear(D/16, W) on the L2-normalised frozen image
feature; image b's context is ``P + pi(I_b)`` (the same bias on every token) and its logits are
``s * I_b . norm(g(P + pi(I_b)))^T`` over the C classes. The reference encodes the C full-length
prompts once per image; here the B contexts of a batch go through the text tower in one call of
the shared-prefix encoder, which runs each image's ``[SOS][context]`` prefix once and each class's
own tokens attending to it (``benchmarks/cocoop_step.py`` measures the difference). Evaluation
cannot cache text features (they depend on the image): it encodes ``eval_chunk`` images at a
time. P and the meta-network are uploaded and averaged (size-weighted); nothing is personal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, ParamGroup, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import PromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["CoCoOpClient", "CoCoOp"]


class CoCoOpClient(PromptClient):
    """The global context ``ctx`` and meta-network ``meta_net``, trained from the download."""

    method: "CoCoOp"
    personal_eval = False
    shared_params = {"prompt": "ctx", "meta_net": "meta_net"}  # meta_net.0.weight, ...

    def __init__(self, method: "CoCoOp", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        d, w = backbone.embed_dim, backbone.ctx_width
        hidden = max(1, d // method.reduction)
        self.meta_net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, w))

    def global_init(self) -> Payload:
        """The run's initial prompt and a meta-network drawn from the seed (PyTorch's default
        Linear initialisation), the same for every client."""
        gen = torch_generator(self.run.seed, "cocoop/meta_net")
        init = {"prompt": super().global_init()["prompt"]}
        for name, p in self.meta_net.named_parameters():
            bound = 1 / self.meta_net[int(name.split(".")[0])].in_features ** 0.5
            init[f"meta_net.{name}"] = (torch.rand(p.shape, generator=gen) * 2 - 1) * bound
        return init

    def reset(self, cid: int) -> None:
        self.load_shared(self.global_init())

    def image_contexts(self, features: Tensor) -> Tensor:
        """(B, n_ctx, W): ``P + pi(I_b)`` for L2-normalised image features (B, D)."""
        bias = self.meta_net(features.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def conditioned_logits(self, features: Tensor) -> Tensor:
        """(B, C) logits, each image against the class features of its own context."""
        text = self.text_features(self.image_contexts(features))
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", features, text.to(features.dtype))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.conditioned_logits(batch["features"])

    def eval_state(self) -> None:
        return None

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        chunk = self.method.eval_chunk
        return torch.cat([self.conditioned_logits(f) for f in batch["features"].split(chunk)])

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, *self.meta_net.parameters()], self.run.train.lr)]


@dataclass
class CoCoOp(PromptMethod):
    """CoCoOp (Zhou et al., CVPR 2022), federated by FedAvg (FLiP): a global context plus a
    meta-network's per-image bias; both averaged."""

    name = "cocoop"
    client_class = CoCoOpClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER
    keep_optimizer_state = False  # FLiP: a fresh optimizer every round

    n_ctx: int = 4
    """Learnable context vectors (CoCoOp's 4)."""
    ctx_init: Optional[str] = "a photo of a"
    """CoCoOp initialises the context from "a photo of a" (FLiP: random, ``ctx_init: null``)."""
    reduction: int = 16
    """The meta-network's hidden width is D / reduction (CoCoOp's 16)."""
    eval_chunk: int = 64
    """Images whose text features are encoded together at evaluation (memory: chunk x C prompts)."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.reduction >= 1, "method.reduction must be >= 1"),
                (self.eval_chunk >= 1, "method.eval_chunk must be >= 1"),
            ]
            if not ok
        ]
        return out
