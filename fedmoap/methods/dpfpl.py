"""DP-FPL (corrected): Tran, Sun, Patterson, Milanova, ICLR 2025, with per-example clipping.

Client prompt = P_G + u v + r: a global prompt P_G (trained, uploaded, FedAvg'd) plus a private
local prompt P_L that is re-factorised before every step by one power-iteration step into a rank-r
part u v and a residual r = P_L - u v (constant for the step). Gradients reach P_G, u and v; P_L
moves by the first-order change of u v, g_u v + u g_v, so under ``dp.mode record_sgd`` the local
prompt is updated only through the clipped and noised factor gradients (noise of rank-r
dimension, the paper's point), and the residual is post-processing.

Privacy, unlike the released code: run it with ``--dp.mode record_sgd``. Every
example's gradient over (P_G, u, v) together is clipped to ``dp.clip`` before the noise, so the
sensitivity is what the accountant assumes; the released code clips the batch-mean gradient and
calibrates sigma = sqrt(T ln(1/delta)) / epsilon as if the sensitivity were C/B. Simplifications:
FedAvg rounds with local epochs instead of DP-FPL's FedSGD (the server averaging one noisy batch
gradient per step), so the global part's noise is added by the client (no trusted aggregator);
the factorisation keeps v = u^T P_L (a rank-r approximation; the released code also orthonormalises
v, dropping the singular values) from a fixed seeded start; P_L's gradient omits the released
code's extra u u^T term and its division by 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, HeldOut, ParamGroup, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["DPFPLClient", "DPFPL"]


class DPFPLClient(GlobalPromptClient):
    method: "DPFPL"

    def __init__(self, method: "DPFPL", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        n_ctx, width = self.ctx.shape
        rank = max(1, min(method.rank, n_ctx, width))
        self.local = nn.Parameter(torch.zeros(n_ctx, width))
        self.u = nn.Parameter(torch.zeros(n_ctx, rank))
        self.v = nn.Parameter(torch.zeros(rank, width))
        self.start = torch.randn(width, rank, generator=torch_generator(run.seed, "dpfpl_start"))
        self.residual: Tensor | None = None

    def reset(self, cid: int) -> None:
        super().reset(cid)
        gen = torch_generator(self.run.seed, "dpfpl_local", cid)
        with torch.no_grad():
            self.local.copy_(torch.randn(self.local.shape, generator=gen) * 0.02)
            self.u.zero_()
            self.v.zero_()

    def prepare_unseen(self, held: HeldOut) -> None:
        """P_G alone (P_L = 0): a never-trained client has no local prompt."""
        self.prepare_eval(held.download(None))
        self.local.data.zero_()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Factorise P_L = u v + r (one power-iteration step); the factors are this step's
        trainable variables."""
        with torch.no_grad():
            p = self.local.detach()
            u = torch.linalg.qr(p @ self.start.to(p)).Q
            v = u.t() @ p
            self.u.copy_(u)
            self.v.copy_(v)
            self.residual = p - u @ v
        self.u.grad = self.v.grad = None

    def on_after_backward(self) -> None:
        """P_L's gradient: the first-order change of u v under the (noised) factor gradients."""
        gu, gv = self.u.grad, self.v.grad
        if gu is None and gv is None:
            return
        gu = torch.zeros_like(self.u) if gu is None else gu
        gv = torch.zeros_like(self.v) if gv is None else gv
        self.local.grad = (gu @ self.v + self.u @ gv).detach()

    def client_ctx(self) -> Tensor:
        if self.training and self.residual is not None:
            return self.ctx + self.u @ self.v + self.residual
        return self.ctx + self.local

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self.text_features(self.client_ctx()))

    def eval_state(self) -> Tensor:
        return self.text_features(self.client_ctx())

    def train(self, mode: bool = True):
        self.residual = None  # a new phase re-factorises before its first step
        return super().train(mode)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, self.local], self.run.train.lr)]

    def dp_parameters(self) -> list[nn.Parameter]:
        """What DP-SGD clips and noises: the global prompt and the local factors."""
        return [self.ctx, self.u, self.v]


@dataclass
class DPFPL(PromptMethod):
    """DP-FPL (corrected) (Tran et al., ICLR 2025): global prompt (FedAvg) + private local prompt
    factorised into rank-r factors and a residual; private with --dp.mode record_sgd (per-example
    clipping of the global prompt's and the factors' gradients)."""

    name = "dpfpl"
    client_class = DPFPLClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    rank: int = 8
    """Rank r of the local prompt's factorisation u v (the paper's default 8; capped at n_ctx)."""

    def problems(self) -> list[str]:
        return super().problems() + ([] if self.rank >= 1 else ["method.rank must be >= 1"])
