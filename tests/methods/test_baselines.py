"""The baselines of pFedMoAP's tables (PromptFL+FT/FedProx/FedPer/FedAMP, pFedPrompt, FedOTP,
FedPGP), across methods: the reference codes' bugs cannot happen here.

- every private part survives rounds untouched by the server and differs between clients (FLiP
  averages FedOTP's local prompt and re-copies FedPGP's U, V from the server);
- uploads are exactly the shared parts;
- logits have one column per class (FedPGP's script doubles every class).

Each method's own terms (FedProx's and FedAMP's proximal gradients, FedOTP's transport plan,
FedAMP's server weights, PromptFL+FT's discarded copy, pFedPrompt's cache) are tested in its own
``test_<method>.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from tests.worlds import a_batch, pathological_world, same_state, tiny_federation

METHODS = registry()
NEW = ["promptfl_ft", "fedprox", "fedper", "fedamp", "pfedprompt", "fedotp", "fedpgp"]
SMALL = {
    "n_ctx": 4,
    "d_gating": 32,
    "heads": 4,
    "num_experts": 2,
    "vision_tokens": 2,
    "bottleneck": 2,
    "ft_epochs": 1,
    "depth": 2,
    "text_blocks": [1, 2],
    "vision_blocks": [1, 2],
    "text_depth": 2,
    "vision_depth": 2,
}
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients (plain features only), features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def federation(world, name: str, tmp_path: Path, **knobs) -> Federation:
    backbone, classnames, data = world
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    method = cls(**{**{k: v for k, v in SMALL.items() if k in fields}, **knobs})
    return tiny_federation(world, method, tmp_path / "clients")


# ---------------------------------------------------------------------------- private parts
PRIVATE = {
    "fedotp": lambda m: {"local": m.local.detach().clone()},
    "fedpgp": lambda m: {"u": m.u.detach().clone(), "v": m.v.detach().clone()},
    "fedper": lambda m: {"personal": m.ctx.detach()[~m.shared].clone()},
    "fedamp": lambda m: {"prompt": m.ctx.detach().clone()},
    "pfedprompt": lambda m: {"keys": m.cache_keys.clone(), "values": m.cache_values.clone()},
}


@pytest.mark.parametrize("name", list(PRIVATE))
def test_private_parts_survive_rounds_and_differ_between_clients(world, tmp_path, name):
    fed = federation(world, name, tmp_path)
    for t in (1, 2):
        fed.run_round(t, progress=False)
    server_tensors = [v for v in _tensors(fed.server.state_dict())]
    private = {}
    for cid in range(NUM_CLIENTS):
        fed.module.load_client(cid, fed.store.get(cid))
        private[cid] = PRIVATE[name](fed.module)
        fed.module.prepare_eval(fed.server.eval_payload(cid))  # evaluated with its own part
        same_state(PRIVATE[name](fed.module), private[cid], f"{name} client {cid} after prepare_eval")
        if name != "fedamp":  # FedAMP's client restarts from u_i by design (amp_init: u)
            fed.module.load_client(cid, fed.store.get(cid))
            fed.module.receive(fed.server.payload(cid, 3))  # next round starts from it
            same_state(PRIVATE[name](fed.module), private[cid], f"{name} client {cid} after receive")
        for part in private[cid].values() if name != "fedamp" else ():  # FedAMP uploads w_i
            assert not any(s.shape == part.shape and torch.equal(s, part) for s in server_tensors), (
                f"{name}: the server holds client {cid}'s private part"
            )
    for key in private[0]:
        assert not torch.equal(private[0][key], private[1][key]), f"{name}: {key} equal for clients 0, 1"


UPLOADS = {
    "promptfl_ft": "prompt",
    "fedprox": "prompt",
    "fedamp": "prompt",
    "pfedprompt": "prompt",
    "fedotp": "prompt",
    "fedpgp": "prompt",
    "fedper": "shared",
}


@pytest.mark.parametrize("name", NEW)
def test_uploads_are_exactly_the_shared_parts(world, tmp_path, name):
    fed = federation(world, name, tmp_path)
    upload, state = fed.train_client(1, 0, fed.server.payload(0, 1))
    assert set(upload) == {UPLOADS[name]}
    m = fed.module
    shared = m.ctx.detach()[m.shared] if name == "fedper" else m.ctx.detach()
    assert torch.equal(upload[UPLOADS[name]], shared)
    if name == "fedper":
        assert upload["shared"].shape[0] == len(m.ctx) - len(m.ctx) // 2
        assert m.shared.tolist() == [True, True, False, False]  # personal = next to the class name
    uploaded = upload[UPLOADS[name]].numel()
    private = sum(p.numel() for p in m.parameters()) - uploaded
    expected = {
        "fedotp": lambda: m.local.numel(),
        "fedpgp": lambda: m.u.numel() + m.v.numel(),
        "fedper": lambda: len(m.ctx) // 2 * m.ctx.shape[1],
    }.get(name, lambda: 0)()
    assert private == expected


@pytest.mark.parametrize("name", list(METHODS))
def test_one_logit_per_class(world, tmp_path, name):
    fed = federation(world, name, tmp_path)
    m = fed.module
    m.load_client(0, None)
    m.prepare_eval(fed.server.eval_payload(0))
    batch = a_batch(fed)
    label = batch.pop("label")
    assert tuple(m(batch).shape) == (len(label), len(world[1]))
    m.begin_eval()
    assert tuple(m.predict(batch).shape) == (len(label), len(world[1]))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
