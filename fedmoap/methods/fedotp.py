"""FedOTP (Li, Huang, Wang, Shi, CVPR 2024): a global and a local prompt matched to the image's
patch features by unbalanced optimal transport.

Client (reference: HongxiaLee/FedOTP ``trainers/GLP_OT.py``): two class-agnostic CoOp contexts,
the global P_G (FedAvg'd) and the local P_L (private). For image b and class c, the M patch
features f_m (``tokens`` input, L2-normalised) and the two prompts' text features g_n give the
similarities ``sim_mn = <f_m, g_cn>``; the transport plan T* between the patches (mass a = 1/M
each) and the prompts solves ``min_T <T, 1 - sim> - eps H(T)`` with ``T 1_N <= a`` and
``T^T 1_M = b = gamma / N`` (COT: the prompts cover only a fraction gamma of the patches;
``ot: sinkhorn`` is the balanced version), by the reference's scaling iterations
``u <- min(a / (K v), 1)``, ``v <- b / (K^T u)``, ``K = exp(-(1 - sim) / eps)``, until the mean
change of v is below ``thresh`` or ``max_iter``. T* is a constant for backpropagation (no_grad);
``logit_c = s * sum_mn T*_mn sim_mn``. The client uploads P_G and is evaluated with
``[P_G^t, P_L,i]``; a never-trained (held-out) client with P_G alone.

Inputs: the patch features are cached like every cached-feature method's pooled ones, with
``data.num_views`` augmented views per training image (the same crops and flips, and the same
view drawn per image and epoch, as the pooled features of the other methods); evaluation reads
the plain view.

Numerics: T is computed in fp32 whatever the autocast, and in the log domain when eps < 0.05,
where ``exp(-C / eps)`` underflows (the reference runs it in fp16, which underflows already for
any cost above ~0.17 at its few-shot script's eps = 0.01). The log-domain iterations are the same
updates on log u and log v, so they agree with the plain ones wherever both are representable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, HeldOut, ParamGroup, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import PromptClient, PromptMethod, initial_prompt
from fedmoap.seeding import torch_generator

__all__ = ["LOG_DOMAIN_BELOW", "transport_plan", "transport_logits", "FedOTPClient", "FedOTP"]

LOG_DOMAIN_BELOW = 0.05
"""eps below which the transport plan is computed in the log domain."""


@torch.no_grad()
def transport_plan(
    sim: Tensor,
    eps: float,
    gamma: float = 1.0,
    unbalanced: bool = True,
    max_iter: int = 100,
    thresh: float = 1e-3,
    log_domain: bool | None = None,
) -> Tensor:
    """The entropic (unbalanced) transport plan for similarities ``sim`` (..., M, N), fp32.

    Marginals: a = 1/M per row (an upper bound ``T 1 <= a`` if ``unbalanced``, else equality),
    b = gamma/N per column (gamma is forced to 1 if balanced). Stops when the mean absolute
    change of the column scaling v (unbalanced; of u, balanced) over the whole tensor is below
    ``thresh``, as the reference code does. ``log_domain`` None: only when eps < 0.05.
    """
    with torch.autocast(sim.device.type, enabled=False):
        sim = sim.float()
        m, n = sim.shape[-2], sim.shape[-1]
        log_a = sim.new_full(sim.shape[:-1], -math.log(m))
        log_b = sim.new_full((*sim.shape[:-2], n), math.log((gamma if unbalanced else 1.0) / n))
        log_k = (sim - 1) / eps
        if log_domain is None:
            log_domain = eps < LOG_DOMAIN_BELOW
        if log_domain:
            f = torch.zeros_like(log_a)
            g = torch.zeros_like(log_b)
            for _ in range(max_iter):
                watched = g if unbalanced else f
                prev = watched.exp()
                f = log_a - torch.logsumexp(log_k + g.unsqueeze(-2), dim=-1)
                if unbalanced:
                    f = f.clamp_max(0.0)
                g = log_b - torch.logsumexp(log_k + f.unsqueeze(-1), dim=-2)
                now = (g if unbalanced else f).exp()
                if (now - prev).abs().mean().item() < thresh:
                    break
            return torch.exp(f.unsqueeze(-1) + log_k + g.unsqueeze(-2))
        k = log_k.exp()
        a, b = log_a.exp(), log_b.exp()
        u = torch.ones_like(a)
        v = torch.ones_like(b)
        for _ in range(max_iter):
            prev = v if unbalanced else u
            u = a / (k @ v.unsqueeze(-1)).squeeze(-1)
            if unbalanced:
                u = u.clamp_max(1.0)
            v = b / (k.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
            now = v if unbalanced else u
            if (now - prev).abs().mean().item() < thresh:
                break
        return u.unsqueeze(-1) * k * v.unsqueeze(-2)


def transport_logits(
    tokens: Tensor,
    text: Tensor,
    scale: Tensor | float,
    eps: float,
    gamma: float,
    unbalanced: bool,
    max_iter: int,
    thresh: float,
) -> Tensor:
    """(B, C) ``scale * sum_mn T*_mn <f_m, g_cn>`` for patch features ``tokens`` (B, M, D) and the
    text features ``text`` (N, C, D) of N prompts; T* (:func:`transport_plan`) is a constant."""
    sim = torch.einsum("bmd,ncd->bcmn", tokens, text.to(tokens.dtype))
    plan = transport_plan(sim.detach(), eps, gamma, unbalanced, max_iter, thresh)
    return scale * (plan.to(sim.dtype) * sim).sum((-2, -1))


class FedOTPClient(PromptClient):
    method: "FedOTP"
    shared_params = {"prompt": "ctx"}  # P_G; P_L (``local``) stays

    def __init__(self, method: "FedOTP", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.local = nn.Parameter(torch.zeros_like(self.ctx))
        """P_L, the private local prompt (``ctx`` is the global prompt P_G)."""

    def initial_local(self) -> Tensor:
        """P_L's initial value, the same for every client and distinct from P_G's."""
        init = initial_prompt(self.backbone, self.method, self.run.seed)
        if self.method.ctx_init:
            return init
        return torch.randn(init.shape, generator=torch_generator(self.run.seed, "fedotp/local_prompt")) * 0.02

    def reset(self, cid: int) -> None:
        super().reset(cid)
        with torch.no_grad():
            self.local.copy_(self.initial_local())

    def prepare_unseen(self, held: HeldOut) -> None:
        """P_G alone: both slots hold P_G (with two equal prompts the transport plan splits each
        patch's mass equally, the logits are those of P_G with mass gamma)."""
        self.receive(held.download(None))
        self.local.data.copy_(self.ctx.data)

    def prompt_features(self) -> Tensor:
        """(2, C, D) L2-normalised text features of [P_G, P_L]; one text-tower batch."""
        return self.text_features(torch.stack([self.ctx, self.local]))

    def ot_logits(self, tokens: Tensor, text: Tensor) -> Tensor:
        """(B, C) ``s * sum_mn T*_mn <f_m, g_cn>`` for patch features (B, M, D)."""
        m = self.method
        return transport_logits(
            tokens, text, self.backbone.logit_scale, m.eps, m.gamma, m.ot == "cot", m.max_iter, m.thresh
        )

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.ot_logits(batch["tokens"], self.prompt_features())

    def eval_state(self) -> Tensor:
        return self.prompt_features()

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.ot_logits(batch["tokens"], self._eval_cache)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, self.local], self.run.train.lr)]


@dataclass
class FedOTP(PromptMethod):
    """FedOTP (Li et al., CVPR 2024): a global (averaged) and a local (private) prompt, matched
    to the image's patch features by unbalanced optimal transport."""

    name = "fedotp"
    inputs = frozenset({"tokens"})
    client_class = FedOTPClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    ot: Literal["cot", "sinkhorn"] = "cot"
    """``cot``: unbalanced OT (rows <= 1/M, columns = gamma/N; the reference's default);
    ``sinkhorn``: balanced OT (both marginals exact; FLiP's port)."""
    gamma: float = 0.8
    """Total mass the prompts take (``top_percent``; reference scripts 0.8)."""
    eps: float = 0.1
    """Entropic regularisation (argparse and CIFAR script 0.1; the few-shot script uses 0.01)."""
    max_iter: int = 100
    """Maximum scaling iterations."""
    thresh: float = 1e-3
    """Stop when the mean change of the scaling vector is below this."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (0 < self.gamma <= 1, "method.gamma must be in (0, 1]"),
                (self.eps > 0, "method.eps must be > 0"),
                (self.max_iter >= 1, "method.max_iter must be >= 1"),
                (self.thresh >= 0, "method.thresh must be >= 0"),
            ]
            if not ok
        ]
        return out
