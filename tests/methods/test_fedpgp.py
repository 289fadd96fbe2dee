"""FedPGP (fedmoap/methods/fedpgp.py): the contrastive loss and its anchor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from tests.worlds import pathological_world, tiny_federation

NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients split pathologically, features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def federation(world, name: str, tmp_path: Path, **knobs) -> Federation:
    """A federation of method ``name`` (small knobs, ``knobs`` over them) on ``world``."""
    return tiny_federation(world, registry()[name](**{**{"n_ctx": 4, "bottleneck": 2}, **knobs}), tmp_path / "clients")


def test_fedpgp_contrastive_loss_reaches_sigma_u_and_v(world, tmp_path):
    fed = federation(world, "fedpgp", tmp_path)
    m = fed.module
    m.load_client(0, None)
    full, sigma = m.text_features(torch.stack([m.personal_prompt(), m.ctx]))
    m.contrastive(full, sigma).backward()
    for name in ("ctx", "u", "v"):
        grad = getattr(m, name).grad
        assert grad is not None and grad.abs().sum() > 0, f"no contrastive gradient on {name}"


def test_fedpgp_anchor_is_the_hand_crafted_prompt_or_the_placeholder(world, tmp_path):
    backbone, classnames, _ = world
    m = federation(world, "fedpgp", tmp_path).module
    slots = backbone.prepare_prompts([f"a photo of a {c}." for c in classnames], 0)
    torch.testing.assert_close(m.anchor, F.normalize(backbone.encode_prompts(slots), dim=-1))
    p = federation(world, "fedpgp", tmp_path, anchor="placeholder").module
    x = backbone.embed_tokens("X X X X")
    torch.testing.assert_close(p.anchor, F.normalize(backbone.encode_prompts(p.slots, x), dim=-1))
