"""PromptFL (Guo et al., 2023): FedAvg of one CoOp prompt shared by all clients."""
from __future__ import annotations

from torch import Tensor

from fedmoap.methods.base import FedAvgServer, Payload, PromptClient


class PromptFLClient(PromptClient):
    """Trains the global prompt on local data, uploads it; always evaluated with the global one."""

    def receive(self, payload: Payload) -> None:
        self.ctx.data.copy_(payload["global"])

    def upload(self) -> dict[str, Tensor]:
        return {"prompt": self.ctx.detach().cpu().clone()}

    def prepare_eval(self, payload: Payload, has_state: bool) -> None:
        self.ctx.data.copy_(payload["global"])


PromptFLServer = FedAvgServer
