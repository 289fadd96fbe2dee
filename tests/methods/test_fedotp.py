"""FedOTP (fedmoap/methods/fedotp.py): the transport plan, exact in fp32 and finite in the log domain,
and the logits it weights."""

from __future__ import annotations

import pytest
import torch

from fedmoap.methods.fedotp import transport_plan
from tests.worlds import a_batch, pathological_world
from tests.worlds import method_federation as federation

NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients split pathologically, features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def test_fedotp_loss_reaches_both_prompts(world, tmp_path):
    fed = federation(world, "fedotp", tmp_path)
    m = fed.module
    m.load_client(0, None)
    m.training_step(a_batch(fed)).backward()
    assert m.ctx.grad.abs().sum() > 0 and m.local.grad.abs().sum() > 0


def _sim(seed=0, shape=(3, 4, 49, 2)):
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.rand(shape, generator=gen) + 0.1


def test_transport_plan_marginals_and_domains_agree():
    sim = _sim()
    plain = transport_plan(sim, 0.1, 0.8, log_domain=False)
    log = transport_plan(sim, 0.1, 0.8, log_domain=True)
    torch.testing.assert_close(plain, log, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(log.sum(-2), torch.full((3, 4, 2), 0.4))  # columns: gamma / N
    assert (log.sum(-1) <= 1 / 49 * (1 + 1e-3)).all()  # rows: <= 1/M
    balanced = transport_plan(sim, 0.1, unbalanced=False)
    torch.testing.assert_close(balanced.sum(-1), torch.full((3, 4, 49), 1 / 49), atol=1e-5, rtol=1e-3)


def test_transport_plan_is_finite_in_the_log_domain_where_exp_underflows():
    sim = _sim() - 0.5  # costs 1.1 - 1.4: exp(-C / 0.01) = 0 in fp32
    assert not torch.isfinite(transport_plan(sim, 0.01, 0.8, log_domain=False)).all()
    plan = transport_plan(sim, 0.01, 0.8)  # eps < 0.05: log domain by default
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(-2), torch.full((3, 4, 2), 0.4), atol=1e-4, rtol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert transport_plan(sim.bfloat16(), 0.1, 0.8).dtype == torch.float32


def test_fedotp_logits_weight_similarities_by_a_constant_plan(world, tmp_path):
    fed = federation(world, "fedotp", tmp_path)
    m = fed.module
    m.load_client(0, None)
    batch = a_batch(fed)
    text = m.prompt_features()
    sim = torch.einsum("bmd,ncd->bcmn", batch["tokens"], text)
    plan = transport_plan(sim.detach(), 0.1, 0.8)
    expected = m.backbone.logit_scale * (plan * sim).sum((-2, -1))
    torch.testing.assert_close(m(batch), expected)
    assert not plan.requires_grad
