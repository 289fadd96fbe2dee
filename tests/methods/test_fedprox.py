"""PromptFL+FedProx (fedmoap/methods/fedprox.py): the proximal term on the live prompt."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmoap.methods import registry
from tests.worlds import a_batch, pathological_world
from tests.worlds import method_federation as federation

NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients split pathologically, features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def test_fedprox_term_has_the_gradient_of_the_live_parameter(world, tmp_path):
    fed = federation(world, "fedprox", tmp_path, mu=0.5)
    m = fed.module
    m.load_client(0, None)
    m.receive(fed.server.payload(0, 1))
    with torch.no_grad():
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    m.ctx.grad = None
    m.proximal().backward()
    expected = 0.5 * (m.ctx - m.anchor).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(m.ctx.grad, expected)


def test_no_proximal_term_before_a_global_prompt_arrives(world, tmp_path):
    fed = federation(world, "fedprox", tmp_path, mu=0.5)
    m = fed.module
    m.load_client(0, None)
    assert m.anchor is None and float(m.proximal()) == 0.0
    batch = a_batch(fed)
    torch.testing.assert_close(m.training_step(batch), F.cross_entropy(m(batch), batch["label"]))
    m.receive(fed.server.payload(0, 1))
    m.load_client(1, None)  # a fresh client forgets the last one's anchor
    assert m.anchor is None


def test_a_negative_mu_is_a_problem():
    assert registry()["fedprox"](mu=0.0).problems() == []
    assert registry()["fedprox"](mu=-0.1).problems() == ["method.mu must be >= 0"]
