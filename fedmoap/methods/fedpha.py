"""FedPHA (Fang, Huang, Wan, Yang, Ye, ICML 2025), from its code: a fixed-length global prompt
shared by FedAvg and a local prompt per client, of the client's own length, aligned with the
global prompt's weak directions.

Client (reference: CYFang6/FedPHA ``trainers/GL_SVDMSE.py``, ``GL_SVDMSE_HE.py``; only the
abstract was readable): P_G (n_g x W) global, P_L (n_i x W) local. From ``P_G = U S V^T``, with
``k = floor(n_g (1 - ratio))`` and V_2 the n_g - k weakest right-singular directions,
``Pi = V_2 V_2^T`` and ``P~_L = P_L Pi`` (the code calls it a null space; it is the low-energy part
of P_G's row space). With T_L, T_G, T~ the normalised text features of P_L, P_G, P~_L::

    L = CE(s I T_L^T) + CE(s I T_G^T) + lambda_pull mean((T_L - T~)^2)
        + lambda_push mean_c relu(alpha - ||T_L,c - T_G,c||)

The SVD is differentiated (``detach_basis: false``, the code). A client is evaluated with its
local prompt alone; one that never trained with P_G (``unseen_eval: global``). Clients of other
lengths get prompt slots of their own length (the reference reuses the longest prompt's end-token
position for shorter ones and so reads the wrong token; not copied). P_G is uploaded and averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone, PromptSlots
from fedmoap.errors import FedmoapError
from fedmoap.methods.base import FedAvgServer, ParamGroup, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["weak_projector", "FedPHAClient", "FedPHA"]


def weak_projector(prompt: Tensor, ratio: float) -> Tensor:
    """(W, W) projector onto the ``n - floor(n (1 - ratio))`` weakest right-singular directions of
    ``prompt`` (n x W), computed in float32 at least."""
    n = prompt.shape[0]
    k = math.floor(n * (1 - ratio))
    work = prompt if prompt.dtype == torch.float64 else prompt.float()
    _, _, vh = torch.linalg.svd(work, full_matrices=False)
    weak = vh[k:].t()
    return (weak @ weak.t()).to(prompt.dtype)


class FedPHAClient(GlobalPromptClient):
    """Global ``ctx`` (P_G) and a private ``local`` of the longest client length, of which the
    current client uses its first n_i rows."""

    method: "FedPHA"

    def __init__(self, method: "FedPHA", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        lengths = method.local_lengths
        if lengths is not None and len(lengths) < run.num_clients:
            raise FedmoapError(f"method.local_lengths has {len(lengths)} entries for {run.num_clients} clients")
        self.local = nn.Parameter(torch.zeros(max(lengths or [len(self.ctx)]), backbone.ctx_width))
        """P_L, private: rows beyond the current client's length are unused (they keep their init)."""
        self._local_slots: dict[int, PromptSlots] = {}
        self.trained = False

    def length(self) -> int:
        lengths = self.method.local_lengths
        return len(self.ctx) if lengths is None or self.client_id is None else lengths[self.client_id]

    def slots_of(self, n: int) -> PromptSlots:
        if n == len(self.ctx):
            return self.slots
        if n not in self._local_slots:
            texts = [self.method.template.format(c) for c in self.classnames]
            self._local_slots[n] = self.backbone.prepare_prompts(texts, n).to(self.ctx.device)
        return self._local_slots[n]

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._local_slots = {}

    def reset(self, cid: int) -> None:
        """P_G from the run's initial prompt; P_L from one N(0, 0.02^2) draw shared by all clients."""
        super().reset(cid)
        gen = torch_generator(self.run.seed, "fedpha/local")
        with torch.no_grad():
            self.local.copy_(torch.randn(self.local.shape, generator=gen) * 0.02)

    def load_client(self, cid: int, state: dict | None) -> None:
        super().load_client(cid, state)
        self.trained = state is not None

    def receive(self, payload: Payload) -> None:
        super().receive(payload)
        self.trained = True

    def begin_adaptation(self) -> None:
        super().begin_adaptation()
        self.trained = True

    def local_features(self, projected: bool) -> Tensor:
        """(C, D) T_L, or (2, C, D) [T_L, T~] with ``projected``."""
        n, m = self.length(), self.method
        local = self.local[:n]
        if not projected:
            return F.normalize(self.backbone.encode_prompts(self.slots_of(n), local), dim=-1)
        basis = self.ctx.detach() if m.detach_basis else self.ctx
        both = torch.stack([local, local @ weak_projector(basis, m.ratio)])
        return F.normalize(self.backbone.encode_prompts(self.slots_of(n), both), dim=-1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        m = self.method
        t_l, t_proj = self.local_features(projected=True)
        t_g = self.text_features()
        loss = F.cross_entropy(self.logits(batch, t_l), batch["label"]) + F.cross_entropy(
            self.logits(batch, t_g), batch["label"]
        )
        pull = (t_l - t_proj).pow(2).mean()
        push = F.relu(m.alpha - (t_l - t_g).norm(dim=-1)).mean()
        return loss + m.lambda_pull * pull + m.lambda_push * push

    def eval_state(self) -> Tensor:
        if not self.trained and self.method.unseen_eval == "global":
            return self.text_features()
        return self.local_features(projected=False)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, self.local], self.run.train.lr)]


@dataclass
class FedPHA(PromptMethod):
    """FedPHA (Fang et al., ICML 2025), from its code: a global prompt (FedAvg) and local prompts
    of per-client lengths, pulled toward their projection on the global prompt's weak directions
    and pushed away from the global features; evaluated with the local prompt."""

    name = "fedpha"
    client_class = FedPHAClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    local_lengths: Optional[list[int]] = None
    """Local prompt length per client id (the HE variant, e.g. [16, 16, 32, 32]); null: n_ctx."""
    ratio: float = 0.8
    """rho: the weak directions are the last n_ctx - floor(n_ctx (1 - rho)) singular ones."""
    alpha: float = 1.0
    """Margin of the push term."""
    lambda_pull: float = 1.0
    """Weight of the pull term (local features toward their projection)."""
    lambda_push: float = 1.0
    """Weight of the push term (local features away from the global ones)."""
    detach_basis: bool = False
    """Treat the projector as a constant (false: the code differentiates the SVD)."""
    unseen_eval: Literal["global", "local"] = "global"
    """A client that never trained is evaluated with P_G (``global``) or its untrained P_L."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (0 < self.ratio <= 1, "method.ratio must be in (0, 1]"),
                (self.alpha >= 0, "method.alpha must be >= 0"),
                (self.lambda_pull >= 0 and self.lambda_push >= 0, "method.lambda_pull and lambda_push must be >= 0"),
                (
                    self.local_lengths is None or min(self.local_lengths, default=0) >= 1,
                    "method.local_lengths must be a non-empty list of lengths >= 1",
                ),
            ]
            if not ok
        ]
        return out
