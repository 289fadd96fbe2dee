"""KgCoOp (Yao, Zhang, Xu, CVPR 2023), federated by FedAvg as FLiP does: CoOp's prompt with a
knowledge-guided term that keeps each class's learned text feature close to the frozen feature of
a hand-crafted prompt.

Loss (reference: htyao89/KgCoOp ``trainers/kgcoop.py``): with t_c = g(ctx, class c) and the
frozen anchor t_c^zs = g("a photo of a {c}.")::

    L = CE(s cos(I, t), y) + weight * (1 - mean_c cos(t_c, t_c^zs))

FLiP's port hard-codes weight 1 and uploads two tensors its prompt learner never uses; the paper's
scripts use weight 8 and fedmoap uploads the prompt only. Every participant trains the global prompt
from the download; the server averages it (size-weighted); nothing is personal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.methods.base import FedAvgServer
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod

__all__ = ["KgCoOpClient", "KgCoOp"]


class KgCoOpClient(GlobalPromptClient):
    """Trains the global prompt with the knowledge-guided term; evaluated with the global prompt."""

    method: "KgCoOp"
    personal_eval = False
    _anchor: Optional[Tensor] = None

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._anchor = None

    @property
    def anchor(self) -> Tensor:
        """(C, D) L2-normalised frozen features of the hand-crafted prompt (computed once per
        label space)."""
        if self._anchor is None:
            with torch.no_grad():
                bb = self.backbone
                slots = bb.prepare_prompts([self.method.anchor_template.format(c) for c in self.classnames], 0)
                self._anchor = F.normalize(bb.encode_prompts(slots.to(self.ctx.device)).float(), dim=-1)
        return self._anchor

    def knowledge_gap(self, text: Tensor) -> Tensor:
        """1 - mean_c cos(t_c, t_c^zs) for (C, D) normalised text features."""
        return 1 - (text * self.anchor.to(text.dtype)).sum(-1).mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        text = self.text_features()
        loss = F.cross_entropy(self.logits(batch, text), batch["label"])
        return loss + self.method.weight * self.knowledge_gap(text)


@dataclass
class KgCoOp(PromptMethod):
    """KgCoOp (Yao et al., CVPR 2023), federated by FedAvg (FLiP): a global prompt trained with CE
    plus ``weight`` x the distance of its class features from a hand-crafted prompt's."""

    name = "kgcoop"
    client_class = KgCoOpClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER
    keep_optimizer_state = False  # FLiP: a fresh optimizer every round

    n_ctx: int = 4
    """Learnable context vectors (KgCoOp's 4)."""
    ctx_init: Optional[str] = "a photo of a"
    """KgCoOp initialises the context from "a photo of a" (FLiP: random, ``ctx_init: null``)."""
    weight: float = 8.0
    """lambda of the knowledge-guided term (the paper's scripts 8; FLiP hard-codes 1)."""
    anchor_template: str = "a photo of a {}."
    """The hand-crafted prompt (KgCoOp's per-dataset templates: set the dataset's, e.g. "a photo of
    a {}, a type of pet.")."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (self.weight >= 0, "method.weight must be >= 0"),
                ("{}" in self.anchor_template, "method.anchor_template must contain {} for the class name"),
            ]
            if not ok
        ]
        return out
