"""Federated prompt-learning methods, by name: a client module class and a server class each."""
from __future__ import annotations

from dataclasses import dataclass

from fedmoap.methods.base import ClientModule, Server
from fedmoap.methods.coop import CoOpClient, CoOpServer
from fedmoap.methods.pfedmoap import PFedMoAPClient, PFedMoAPServer
from fedmoap.methods.promptfl import PromptFLClient, PromptFLServer
from fedmoap.methods.zeroshot import ZeroShotClient, ZeroShotServer


@dataclass(frozen=True)
class Method:
    client: type[ClientModule]
    server: type[Server]


METHODS: dict[str, Method] = {
    "zeroshot": Method(ZeroShotClient, ZeroShotServer),
    "coop": Method(CoOpClient, CoOpServer),
    "promptfl": Method(PromptFLClient, PromptFLServer),
    "pfedmoap": Method(PFedMoAPClient, PFedMoAPServer),
}
