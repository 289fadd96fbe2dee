"""FedPGP (Cui, Li, Wang, Shi, ICML 2024): a global prompt plus a private low-rank term, with a
prompt-wise contrastive loss against CLIP's hand-crafted prompt.

Client (reference: TianyuCuiOvO/FedPGP ``trainers/fedpgp.py``): personal prompt
``P_i = sigma_G + U_i V_i`` with sigma_G (n_ctx x W) global and U_i (n_ctx x b), V_i (b x W)
private, all initialised N(0, 0.02^2) (so U V is ~0 at the start). With T_full = g(sigma + U V),
T_sigma = g(sigma) and the frozen anchor T_0, per class c:
``L = CE(s cos(I, T_full), y) + mu * mean_c -log(e^{cos(T_0, T_sigma)/tau} /
(e^{cos(T_0, T_sigma)/tau} + e^{cos(T_sigma, T_full)/tau}))`` -- the positive pair pulls the
global prompt toward CLIP's knowledge, the negative pushes the low-rank term to carry what is
client-specific. Uploads sigma; evaluated with ``[sigma_G^t, U_i, V_i]``; a never-trained (held-out)
client with sigma_G alone.

Anchor: the paper's "hand-crafted prompt", "a photo of a {}." (``anchor: template``); the
reference code's anchor is the token embeddings of the learner's own "X X ... X {class}."
(``anchor: placeholder``). Logits are over the C classes once: the reference script's
``NUM_PROMPT=2`` doubles every class (2C logits, the second block always wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.errors import FedmoapError
from fedmoap.methods.base import FedAvgServer, HeldOut, ParamGroup, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import PromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["FedPGPClient", "FedPGP"]


class FedPGPClient(PromptClient):
    method: "FedPGP"
    shared_params = {"prompt": "ctx"}  # sigma_G; U, V stay

    def __init__(self, method: "FedPGP", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        n, b = len(self.ctx), method.bottleneck
        self.u = nn.Parameter(torch.zeros(n, b))
        """U_i (n_ctx x b), private."""
        self.v = nn.Parameter(torch.zeros(b, backbone.ctx_width))
        """V_i (b x W), private."""
        self._anchor: Tensor | None = None

    def reset(self, cid: int) -> None:
        """sigma from the run's initial prompt; U, V from one draw shared by all clients."""
        super().reset(cid)
        gen = torch_generator(self.run.seed, "fedpgp/lowrank")
        with torch.no_grad():
            self.u.copy_(torch.randn(self.u.shape, generator=gen) * 0.02)
            self.v.copy_(torch.randn(self.v.shape, generator=gen) * 0.02)

    def prepare_unseen(self, held: HeldOut) -> None:
        """sigma_G alone (U V = 0)."""
        self.receive(held.download(None))
        self.u.data.zero_()

    def personal_prompt(self) -> Tensor:
        return self.ctx + self.u @ self.v

    @property
    def anchor(self) -> Tensor:
        """(C, D) frozen, L2-normalised anchor text features (computed once)."""
        if self._anchor is None:
            with torch.no_grad():
                m, bb = self.method, self.backbone
                if m.anchor == "template":
                    slots = bb.prepare_prompts([m.anchor_template.format(c) for c in self.classnames], 0)
                    feats = bb.encode_prompts(slots.to(self.ctx.device))
                else:
                    words = bb.embed_tokens(" ".join(["X"] * len(self.ctx)))
                    if len(words) != len(self.ctx):
                        raise FedmoapError(
                            f"method.anchor placeholder: 'X' x {len(self.ctx)} is "
                            f"{len(words)} tokens for this text tower"
                        )
                    feats = bb.encode_prompts(self.slots, words.to(self.ctx.device))
            self._anchor = F.normalize(feats.float(), dim=-1)
        return self._anchor

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self.text_features(self.personal_prompt()))

    def contrastive(self, full: Tensor, sigma: Tensor) -> Tensor:
        """mean_c CE([cos(T_0, T_sigma), cos(T_sigma, T_full)] / tau, 0) for (C, D) features."""
        anchor = self.anchor.to(sigma.dtype)
        pos = (anchor * sigma).sum(-1)
        neg = (sigma * full).sum(-1)
        logits = torch.stack([pos, neg], dim=1) / self.method.tau
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        full, sigma = self.text_features(torch.stack([self.personal_prompt(), self.ctx]))
        loss = F.cross_entropy(self.logits(batch, full), batch["label"])
        return loss + self.method.mu * self.contrastive(full, sigma)

    def eval_state(self) -> Tensor:
        return self.text_features(self.personal_prompt())

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, self.u, self.v], self.run.train.lr)]


@dataclass
class FedPGP(PromptMethod):
    """FedPGP (Cui et al., ICML 2024): a global prompt plus a private low-rank term U V, with a
    contrastive loss tying the global prompt to CLIP's hand-crafted one."""

    name = "fedpgp"
    client_class = FedPGPClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    bottleneck: int = 8
    """Rank b of the private term U V (reference script 8; argparse 4)."""
    mu: float = 0.5
    """Weight of the contrastive loss (reference script 0.5; argparse 1)."""
    tau: float = 0.5
    """Temperature of the contrastive loss."""
    anchor: Literal["template", "placeholder"] = "template"
    """The positive anchor T_0: ``template`` = the hand-crafted ``anchor_template`` (the paper);
    ``placeholder`` = the learner's own "X X ... X {class}." (the reference code)."""
    anchor_template: str = "a photo of a {}."
    """The hand-crafted prompt of ``anchor: template``."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.bottleneck >= 1, "method.bottleneck must be >= 1"),
                (self.mu >= 0, "method.mu must be >= 0"),
                (self.tau > 0, "method.tau must be > 0"),
                ("{}" in self.anchor_template, "method.anchor_template must contain {} for the class name"),
            ]
            if not ok
        ]
        return out
