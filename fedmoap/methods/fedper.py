"""PromptFL+FedPer (Arivazhagan et al., 2019): the context tokens are split into shared ones
(averaged by the server, FedPer's base layers) and personal ones (never leave the client, FedPer's
personalisation layers).

A prompt has no layers; the personal tokens are by default the ones next to the class name (the
"output end", as FedPer's head), half of the context (PromptFolio's ``per_length = n_ctx // 2``,
the only public choice). Every client starts from the same initial prompt; each round it takes
the global shared tokens, trains both parts, and uploads the shared ones; it is evaluated with
``[shared^t, personal_i]``; a never-trained (held-out) client with the shared tokens and the mean
of the clients' personal ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from fedmoap.backbones.base import Backbone
from fedmoap.methods.base import FedAvgServer, HeldOut, Payload, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import PromptClient, PromptMethod, initial_prompt

__all__ = ["FedPerClient", "FedPer"]


class FedPerClient(PromptClient):
    method: "FedPer"

    def __init__(self, method: "FedPer", backbone: Backbone, classnames: list[str], run: RunContext) -> None:
        super().__init__(method, backbone, classnames, run)
        n = len(self.ctx)
        personal = method.personal_count(n)
        self.shared = torch.zeros(n, dtype=torch.bool)
        """Which context tokens are shared (the rest are personal)."""
        if method.personal_side == "end":
            self.shared[: n - personal] = True
        else:
            self.shared[personal:] = True

    def global_init(self) -> Payload:
        return {"shared": initial_prompt(self.backbone, self.method, self.run.seed)[self.shared]}

    def reset(self, cid: int) -> None:
        """Shared and personal tokens start from the run's initial prompt (same for all clients)."""
        with torch.no_grad():
            self.ctx.copy_(initial_prompt(self.backbone, self.method, self.run.seed))

    def receive(self, payload: Payload) -> None:
        with torch.no_grad():
            self.ctx[self.shared.to(self.ctx.device)] = payload["shared"].to(self.ctx)

    prepare_eval = receive

    def prepare_unseen(self, held: HeldOut) -> None:
        """The global shared tokens with the mean of the training clients' personal tokens
        (their initial value while no client keeps any)."""
        self.receive(held.download(None))
        peers = held.peer_mean()
        if peers is not None:
            personal = ~self.shared.to(self.ctx.device)
            with torch.no_grad():
                self.ctx[personal] = peers["ctx"].to(self.ctx)[personal]

    def upload(self) -> Payload:
        return {"shared": self.ctx.detach()[self.shared.to(self.ctx.device)].cpu().clone()}


@dataclass
class FedPer(PromptMethod):
    """PromptFL+FedPer (Arivazhagan et al., 2019): shared context tokens averaged by the server,
    personal ones (next to the class name) kept by each client."""

    name = "fedper"
    client_class = FedPerClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    personal_tokens: Optional[int] = None
    """Personal (never uploaded) context tokens; null = half of the context (n_ctx // 2)."""
    personal_side: Literal["end", "start"] = "end"
    """Where the personal tokens sit: ``end`` = next to the class name (FedPer's head), ``start``
    = right after the start token."""

    def personal_count(self, n_ctx: int) -> int:
        return n_ctx // 2 if self.personal_tokens is None else self.personal_tokens

    def problems(self) -> list[str]:
        out = super().problems()
        p = self.personal_tokens
        if p is not None and (p < 0 or (not self.ctx_init and p > self.n_ctx)):
            out.append(f"method.personal_tokens must be in 0..n_ctx ({self.n_ctx}), got {p}")
        return out

    def backbone_problems(self, backbone: Backbone) -> list[str]:
        n = len(backbone.embed_tokens(self.ctx_init)) if self.ctx_init else self.n_ctx
        if self.personal_count(n) > n:
            return [f"method.personal_tokens {self.personal_tokens} exceeds the context's {n} tokens"]
        return []
