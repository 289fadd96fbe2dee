"""PromptFolio (Pan, Huang, Shi, NeurIPS 2024): a portfolio of a global and a local prompt.

Client (reference: PanBikang/PromptFolio ``trainers/PromptFolio.py``): a global context P_G
(FedAvg) and a private local context P_L, both encoded by the frozen text tower; the class
features are mixed, **not renormalised**::

    T = (1 - theta) * norm(g(P_G)) + theta * norm(g(P_L)),   logits = s * norm(I) @ T^T

theta = 0 is PromptFL; theta = 1 trains P_L alone (CoOp-like). Both contexts train jointly every
round; P_G is uploaded and averaged (size-weighted), P_L never leaves the client. A client that
never trained is evaluated with ``unseen_theta`` (its local context is still its random init).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, ParamGroup, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod
from fedmoap.seeding import torch_generator

__all__ = ["PromptFolioClient", "PromptFolio"]


class PromptFolioClient(GlobalPromptClient):
    """Global context ``ctx`` (downloaded, uploaded) and a private local context ``local``."""

    method: "PromptFolio"

    def __init__(self, method: "PromptFolio", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        self.local = nn.Parameter(torch.zeros_like(self.ctx))
        """P_L (n_ctx x W), private."""
        self.trained = False
        """Whether the current client's local context has been trained (else ``unseen_theta``)."""

    def reset(self, cid: int) -> None:
        """P_G from the run's initial prompt; P_L from one N(0, 0.02^2) draw shared by all clients."""
        super().reset(cid)
        gen = torch_generator(self.run.seed, "promptfolio/local")
        with torch.no_grad():
            self.local.copy_(torch.randn(self.local.shape, generator=gen) * 0.02)

    def load_client(self, cid: int, state: dict | None) -> None:
        super().load_client(cid, state)
        self.trained = state is not None

    def begin_adaptation(self) -> None:
        super().begin_adaptation()
        self.trained = True

    def receive(self, payload: Payload) -> None:
        super().receive(payload)
        self.trained = True

    @property
    def theta(self) -> float:
        return self.method.theta if self.trained else self.method.unseen_theta

    def mixed_text_features(self) -> Tensor:
        """(C, D) ``(1 - theta) T_G + theta T_L`` (each normalised, the mix not)."""
        glob, loc = self.text_features(torch.stack([self.ctx, self.local]))
        return (1 - self.theta) * glob + self.theta * loc

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.logits(batch, self.mixed_text_features())

    def eval_state(self) -> Tensor:
        return self.mixed_text_features()

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup([self.ctx, self.local], self.run.train.lr)]


@dataclass
class PromptFolio(PromptMethod):
    """PromptFolio (Pan et al., NeurIPS 2024): class features mixed from a global (FedAvg) and a
    private local prompt with weight ``theta``."""

    name = "promptfolio"
    client_class = PromptFolioClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    n_ctx: int = 8
    """Learnable context vectors per prompt (the reference code's 8; FLiP 4)."""
    theta: float = 0.4
    """Weight of the local prompt's features (the reference code's 0.4; FLiP 0.2)."""
    unseen_theta: float = 0.0
    """theta for a client that never trained (its local prompt is untrained: global only)."""

    def problems(self) -> list[str]:
        out = super().problems()
        out += [
            m
            for ok, m in [
                (0 <= self.theta <= 1, "method.theta must be in [0, 1]"),
                (0 <= self.unseen_theta <= 1, "method.unseen_theta must be in [0, 1]"),
            ]
            if not ok
        ]
        return out
