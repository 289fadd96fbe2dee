"""Bytes per participating client per round for each method, through the methods' own server and
client code, at the paper's prompt geometry (16 context vectors of CLIP RN50's 512-d text width)."""
from __future__ import annotations

from fedmoap.backbones.base import Backbone
from fedmoap.config import RunConfig
from fedmoap.methods import METHODS
from fedmoap.methods.base import initial_prompt, payload_bytes

PAPER_PROMPT_PARAMS = 16 * 512
"""The paper's example: a 16 x 512 prompt is 8,192 parameters (vs 25.6M for a ResNet50)."""


def run(backbone: Backbone, clients: int = 10, rounds: int = 2) -> list[dict]:
    """Simulate ``rounds`` full-participation rounds of ``clients`` clients per method and report
    the last round's traffic (pFedMoAP's clients are then returning ones that download experts)."""
    rows = []
    for name, method in METHODS.items():
        cfg = RunConfig(method=name)
        cfg.prompt.n_ctx = 16
        client = method.client(backbone, ["a", "b"], cfg)  # traffic does not depend on the classes
        server = method.server(cfg, initial_prompt(backbone, cfg))
        down = up = 0
        for _ in range(rounds):
            uploads, down, up = {}, 0, 0
            for cid in range(clients):
                payload = server.payload(cid) if client.trains else {}
                client.load_client(cid, None)
                client.receive(payload)
                uploads[cid] = client.upload() if client.trains else {}
                down, up = down + payload_bytes(payload), up + payload_bytes(uploads[cid])
            server.aggregate({c: u for c, u in uploads.items() if u}, {c: 1 for c in uploads})
        prompt_bytes = PAPER_PROMPT_PARAMS * 4
        rows.append({"method": name, "down_bytes": down / clients, "up_bytes": up / clients,
                     "down_in_prompts": down / clients / prompt_bytes,
                     "up_in_prompts": up / clients / prompt_bytes})
    return rows
