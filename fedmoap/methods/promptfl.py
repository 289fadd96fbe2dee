"""PromptFL (Guo et al., 2023): FedAvg of one CoOp prompt shared by all clients."""

from __future__ import annotations

from dataclasses import dataclass

from fedmoap.methods.base import FedAvgServer
from fedmoap.methods.declarations import PROMPT_LEARNER
from fedmoap.methods.prompts import GlobalPromptClient, PromptMethod

__all__ = ["PromptFLClient", "PromptFL"]


class PromptFLClient(GlobalPromptClient):
    """Trains the global prompt on local data and uploads it; evaluated with the global prompt."""

    personal_eval = False


@dataclass
class PromptFL(PromptMethod):
    """PromptFL (Guo et al., 2023): one CoOp prompt, trained by every participant from the
    global prompt and averaged (FedAvg, weighted by training-set size)."""

    name = "promptfl"
    client_class = PromptFLClient
    server_class = FedAvgServer
    declares = PROMPT_LEARNER
