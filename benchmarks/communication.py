"""Bytes per participating client per round for each method, through the methods' own server and
client code in a federation built as ``fedmoap fit`` builds one, at the paper's prompt geometry
(16 context vectors of CLIP RN50's 512-d text width)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from fedmoap.aggregate import payload_bytes
from fedmoap.backbones.base import Backbone
from fedmoap.config.sections import DataArgs, FedArgs, TrainArgs
from fedmoap.federation.build import assemble
from fedmoap.federation.config import RunConfig
from fedmoap.federation.rounds import default_fabric
from fedmoap.federation.store import ClientStore
from fedmoap.inputs.federated_data import FederatedData, Inputs
from fedmoap.methods import registry

PAPER_PROMPT_PARAMS = 16 * 512
"""The paper's example: a 16 x 512 prompt is 8,192 parameters (vs 25.6M for a ResNet50)."""


def no_data(clients: int, backbone: Backbone) -> FederatedData:
    """``clients`` clients over the classes ``a`` and ``b`` with no images: traffic does not depend
    on the data."""
    empty = torch.zeros(0, dtype=torch.long)
    return FederatedData(["a", "b"], Inputs(empty), Inputs(empty), [empty] * clients, [empty] * clients, 0, backbone)


def run(backbone: Backbone, clients: int = 10, rounds: int = 2) -> list[dict]:
    """Simulate ``rounds`` full-participation rounds of ``clients`` clients per method and report
    the last round's traffic (pFedMoAP's clients are then returning ones that download experts)."""
    rows = []
    data, fabric = no_data(clients, backbone), default_fabric()
    for name, cls in registry().items():
        knobs = {f.name for f in dataclasses.fields(cls)}
        method = cls(**({"n_ctx": 16} if "n_ctx" in knobs else {}))
        if method.backbone_problems(backbone):
            continue
        cfg = RunConfig(
            method=method,
            data=DataArgs(num_clients=clients),
            train=TrainArgs(optimizer_state="keep"),
            fed=FedArgs(rounds=rounds),
        )
        with tempfile.TemporaryDirectory() as store:  # nothing is written: the clients are not trained
            fed = assemble(cfg, data, backbone, fabric=fabric, store=ClientStore(Path(store)))
            client, server = fed.module, fed.server
            down = up = 0
            for t in range(1, rounds + 1):
                uploads, down, up = {}, 0, 0
                for cid in range(clients):
                    payload = server.payload(cid, t) if method.trains else {}
                    client.load_client(cid, None)
                    client.receive(payload)
                    uploads[cid] = client.upload() if method.trains else {}
                    down, up = down + payload_bytes(payload), up + payload_bytes(uploads[cid])
                uploads = {c: u for c, u in uploads.items() if u}
                if uploads:
                    server.aggregate(t, uploads, {c: 1 for c in uploads})
        prompt_bytes = PAPER_PROMPT_PARAMS * 4
        rows.append(
            {
                "method": name,
                "down_bytes": down / clients,
                "up_bytes": up / clients,
                "down_in_prompts": down / clients / prompt_bytes,
                "up_in_prompts": up / clients / prompt_bytes,
            }
        )
    return rows
