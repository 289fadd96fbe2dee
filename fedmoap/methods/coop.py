"""CoOp (Zhou et al., 2022): every client learns its own prompt alone; nothing is sent."""
from __future__ import annotations

from dataclasses import dataclass

from fedmoap.methods.base import Server
from fedmoap.methods.prompts import PromptClient, PromptMethod


@dataclass
class CoOp(PromptMethod):
    """CoOp (Zhou et al., 2022): each client trains its own context on its own data; the server
    holds and sends nothing. A client keeps its prompt and optimizer state from round to round."""

    name = "coop"
    client_class = PromptClient
    server_class = Server
