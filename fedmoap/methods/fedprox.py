"""PromptFL+FedProx (Li et al., 2020): PromptFL whose local objective adds a proximal term
``mu/2 * ||P - P_g||^2`` toward the global prompt received at the start of the round.

The term is computed on the live parameter, so it has a gradient ``mu * (P - P_g)``; the public
reference codes (pFedMoAP, FedOTP, PromptFolio) build it from ``state_dict()`` tensors, which are
detached, so their FedProx adds a constant and trains exactly as FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from fedmoap.methods.base import FedAvgServer, Payload
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod

__all__ = ["FedProxClient", "FedProx"]


class FedProxClient(GlobalPromptClient):
    method: "FedProx"
    personal_eval = False

    anchor: Tensor | None = None
    """The global prompt of the current round (fixed during local training)."""

    def reset(self, cid: int) -> None:
        super().reset(cid)
        self.anchor = None

    def receive(self, payload: Payload) -> None:
        super().receive(payload)
        self.anchor = payload["prompt"].to(self.ctx.device, self.ctx.dtype).clone()

    def proximal(self) -> Tensor:
        """``mu/2 * ||ctx - anchor||^2`` on the live parameter (0 before a global prompt arrived)."""
        if self.anchor is None:
            return self.ctx.new_zeros(())
        return self.method.mu / 2 * (self.ctx - self.anchor).square().sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> Tensor:
        return F.cross_entropy(self(batch), batch["label"]) + self.proximal()


@dataclass
class FedProx(PromptMethod):
    """PromptFL+FedProx (Li et al., 2020): PromptFL with a proximal term mu/2 ||P - P_g||^2 toward
    the round's global prompt, on the live parameter."""

    name = "fedprox"
    client_class = FedProxClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    mu: float = 0.5
    """Weight of the proximal term (reference scripts' --mu 0.5; the paper does not state it)."""

    def problems(self) -> list[str]:
        return super().problems() + ([] if self.mu >= 0 else ["method.mu must be >= 0"])
