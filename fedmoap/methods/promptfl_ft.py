"""PromptFL+FT (Cheng et al., 2021, "fine-tuning is fine"): PromptFL, and at every evaluation
each client fine-tunes a copy of the global prompt on its own training data, tests it and
discards it.

Training is PromptFL's (the global prompt, trained locally and averaged). The fine-tuning runs
through the generic evaluation-time adaptation of the round loop
(:meth:`~fedmoap.methods.base.ClientModule.eval_adaptation_epochs`): a fresh optimizer, the
run's learning rate and cosine schedule, ``ft_epochs`` epochs; the fine-tuned prompt is never
stored nor uploaded, so the next round starts from the global prompt again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedmoap.methods.base import FedAvgServer
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod

__all__ = ["PromptFLFTClient", "PromptFLFT"]


class PromptFLFTClient(GlobalPromptClient):
    method: "PromptFLFT"
    personal_eval = True  # each client fine-tunes its own copy

    def eval_adaptation_epochs(self, t: int, final: bool) -> int:
        m = self.method
        return m.ft_epochs if (m.ft_at == "every_round" or final) else 0


@dataclass
class PromptFLFT(PromptMethod):
    """PromptFL+FT (Cheng et al., 2021): PromptFL, evaluated after each client fine-tunes a copy
    of the global prompt on its own data (the copy is discarded)."""

    name = "promptfl_ft"
    client_class = PromptFLFTClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER

    ft_epochs: int = 5
    """Epochs of fine-tuning at evaluation (fresh optimizer, train.lr, cosine schedule)."""
    ft_at: Literal["every_round", "final"] = "every_round"
    """Fine-tune at every evaluation (the per-round curve is then FT's) or only at the final
    round (earlier rounds show the global prompt, as PromptFL)."""

    def problems(self) -> list[str]:
        return super().problems() + ([] if self.ft_epochs >= 0 else ["method.ft_epochs must be >= 0"])
