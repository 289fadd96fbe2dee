"""CoOp (Zhou et al., 2022): every client learns its own prompt alone; nothing is sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedmoap.methods.base import Server
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import PromptClient, PromptMethod

__all__ = ["CoOp"]


@dataclass
class CoOp(PromptMethod):
    """CoOp (Zhou et al., 2022): each client trains its own context on its own data, outside
    federation; the server holds and sends nothing. A local-only method: ``fed.participation``
    does not apply, every client trains before its first evaluation."""

    name = "coop"
    client_class = PromptClient
    server_class = Server
    declares = PROMPT_LEARNER

    schedule: Literal["every_round", "once"] = "every_round"
    """``every_round``: every client trains ``train.local_epochs`` every round (the same budget
    as the federated methods, curves comparable round by round); ``once``: every client trains
    ``epochs`` epochs in round 1 and never again (the paper's CoOp, 25 epochs outside FL)."""
    epochs: int = 25
    """Epochs of the ``once`` schedule (the paper's 25)."""

    def participants(self, sampled: list[int], num_clients: int, t: int) -> list[int]:
        return list(range(num_clients)) if self.schedule == "every_round" or t == 1 else []

    def local_epochs(self, t: int, default: int) -> int:
        return self.epochs if self.schedule == "once" else default

    def problems(self) -> list[str]:
        return super().problems() + ([] if self.epochs >= 1 else ["method.epochs must be >= 1"])
