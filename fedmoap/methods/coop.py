"""CoOp (Zhou et al., 2022): every client learns its own prompt alone; nothing is sent."""
from __future__ import annotations

from fedmoap.methods.base import PromptClient, Server

# The client keeps and trains its own context from round to round; the server only hands out the
# initial prompt for a client's first evaluation.
CoOpClient = PromptClient
CoOpServer = Server
