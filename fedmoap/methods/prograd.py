"""ProGrad (Zhu et al., ICCV 2023), federated by FedAvg as FLiP does: prompt-aligned gradients.

Client (reference: BeierZhu/Prompt-align ``trainers/prograd.py``, Dassl ``trainer.py``): CoOp's
prompt, and a zero-shot teacher from the hand-crafted prompt (``teacher_template``). With
``L_ce = CE(logits, y)`` and ``L_kl = mean_b sum_c -p_zs,c log p_c * T^2`` (softmax at
temperature T), the applied gradient is g_ce where it agrees with g_kl (cos >= 0), else g_ce minus
``lam`` times its projection on g_kl: the prompt never moves against the general knowledge.
``mode: distill`` is FLiP's port instead (not ProGrad): ``L = CE + weight * KL``.

The projected gradient is applied through a surrogate loss ``(g.detach() * ctx).sum()``, whose
gradient is g exactly; DP-SGD (``pure_training_step = False``) then takes one such step per
example. Every participant trains the global prompt; the server averages it (size-weighted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmoap.methods.base import FedAvgServer, Payload
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod

__all__ = ["project", "ProGradClient", "ProGrad"]


def project(g_ce: Tensor, g_kl: Tensor, lam: float) -> Tensor:
    """ProGrad's update: ``g_ce`` if it agrees with ``g_kl`` (cos >= 0), else ``g_ce`` minus
    ``lam`` times its component along ``g_kl``."""
    dot = (g_ce * g_kl).sum()
    if dot >= 0:
        return g_ce
    unit = g_kl / g_kl.norm()
    return g_ce - lam * (g_ce * unit).sum() * unit


class ProGradClient(GlobalPromptClient):
    """Trains the global prompt with prompt-aligned gradients; evaluated with the global prompt."""

    method: "ProGrad"
    personal_eval = False
    pure_training_step = False  # two gradients inside the step
    _teacher: Optional[Tensor] = None

    def global_init(self) -> Payload:
        """n_ctx vectors: zero, with ``tail_init``'s embedded words as the last ones (ProGrad's
        initialisation), or the base initialisation if ``tail_init`` is null."""
        m = self.method
        if not m.tail_init:
            return super().global_init()
        words = self.backbone.embed_tokens(m.tail_init).detach()
        ctx = torch.zeros(m.n_ctx, self.backbone.ctx_width)
        k = min(len(words), m.n_ctx)
        ctx[m.n_ctx - k :] = words[len(words) - k :]
        return {"prompt": ctx}

    def set_classnames(self, classnames: list[str]) -> None:
        super().set_classnames(classnames)
        self._teacher = None

    @property
    def teacher(self) -> Tensor:
        """(C, D) L2-normalised frozen features of the teacher's hand-crafted prompt."""
        if self._teacher is None:
            with torch.no_grad():
                bb = self.backbone
                slots = bb.prepare_prompts([self.method.teacher_template.format(c) for c in self.classnames], 0)
                self._teacher = F.normalize(bb.encode_prompts(slots.to(self.ctx.device)).float(), dim=-1)
        return self._teacher

    def losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(L_ce, L_kl) of a batch."""
        logits = self(batch)
        temp = self.method.temperature
        with torch.no_grad():
            p_zs = F.softmax(self.logits(batch, self.teacher.to(logits.dtype)) / temp, dim=-1)
        kl = -(p_zs * F.log_softmax(logits / temp, dim=-1)).sum(-1).mean() * temp**2
        return F.cross_entropy(logits, batch["label"]), kl

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        ce, kl = self.losses(batch)
        m = self.method
        if m.mode == "distill":
            return ce + m.weight * kl
        (g_ce,) = torch.autograd.grad(ce, self.ctx, retain_graph=True)
        (g_kl,) = torch.autograd.grad(kl, self.ctx)
        g = project(g_ce.float(), g_kl.float(), m.lam).to(self.ctx.dtype)
        return (g.detach() * self.ctx).sum()


@dataclass
class ProGrad(PromptMethod):
    """ProGrad (Zhu et al., ICCV 2023), federated by FedAvg (FLiP): CoOp's prompt updated only
    along directions that do not contradict the zero-shot teacher (``mode: project``), or FLiP's
    distillation (``mode: distill``)."""

    name = "prograd"
    client_class = ProGradClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER
    keep_optimizer_state = False  # FLiP: a fresh optimizer every round

    tail_init: Optional[str] = "a photo of a"
    """The last context vectors start as these words, the others at zero (ProGrad's init); null
    uses ``ctx_init`` or N(0, 0.02)."""
    teacher_template: str = "a photo of a {}."
    """The zero-shot teacher's hand-crafted prompt."""
    mode: Literal["project", "distill"] = "project"
    """``project``: ProGrad's gradient projection; ``distill``: FLiP's CE + weight x KL."""
    lam: float = 1.0
    """Projection strength (ProGrad's lambda; 1 removes the whole conflicting component)."""
    temperature: float = 1.0
    """Softmax temperature T of the distillation term."""
    weight: float = 1.0
    """``distill``: weight of the KL term (FLiP's 1)."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (0 <= self.lam <= 1, "method.lam must be in [0, 1]"),
                (self.temperature > 0, "method.temperature must be > 0"),
                (self.weight >= 0, "method.weight must be >= 0"),
                ("{}" in self.teacher_template, "method.teacher_template must contain {} for the class name"),
                (not (self.tail_init and self.ctx_init), "method.tail_init and method.ctx_init are both set (set one)"),
            ]
            if not ok
        ]
        return out
