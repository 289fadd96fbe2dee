"""FedAMP (fedmoap/methods/fedamp.py): the proximal term toward the cloud model, the server's message weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmoap.config.sections import TrainArgs
from fedmoap.methods.base import RunContext
from fedmoap.methods.fedamp import FedAMP, FedAMPServer
from fedmoap.run.parse import parse_fit
from tests.worlds import method_federation as federation
from tests.worlds import pathological_world

NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients split pathologically, features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def test_fedamp_term_has_the_gradient_of_the_live_parameter(world, tmp_path):
    fed = federation(world, "fedamp", tmp_path, lam=1.0, alpha=0.5)
    m = fed.module
    m.load_client(0, None)
    payload = fed.server.payload(0, 1)
    assert float(payload["prox_weight"]) == pytest.approx(1.0 / (2 * 0.5))
    m.receive(payload)
    with torch.no_grad():
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    m.ctx.grad = None
    m.proximal().backward()
    expected = 2 * m.prox_weight * (m.ctx - m.cloud).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(m.ctx.grad, expected)


def test_fedamp_previous_keeps_the_personal_prompt_at_receive(world, tmp_path):
    fed = federation(world, "fedamp", tmp_path, amp_init="previous")
    fed.run_round(1, progress=False)
    fed.module.load_client(1, fed.store.get(1))
    before = fed.module.ctx.detach().clone()
    payload = fed.server.payload(1, 2)
    fed.module.receive(payload)
    assert torch.equal(fed.module.ctx, before) and not torch.equal(payload["prompt"], before)


RUN = RunContext(0, 10, TrainArgs(), True)


def test_fedamp_self_weight_is_guarded_for_identical_prompts():
    method = FedAMP(variant="attentive", sigma=1.0, alpha=1.0)
    server = FedAMPServer(method, {"prompt": torch.zeros(2, 3)}, RUN)
    server.aggregate(1, {c: {"prompt": torch.ones(2, 3)} for c in range(10)}, dict.fromkeys(range(10), 1))
    others, xi, alpha = server.message_weights(0)
    assert len(others) == 9 and alpha == pytest.approx(1 / 9)  # unguarded: xi_ii = 1 - 9 = -8
    assert 1 - float(xi.sum()) >= -1e-12
    torch.testing.assert_close(server.cloud(0)[0], torch.ones(2, 3))


def test_fedamp_weights_follow_the_formulas():
    prompts = {c: torch.randn(2, 3, generator=torch.Generator().manual_seed(c)) for c in range(4)}
    heur = FedAMPServer(FedAMP(variant="heuristic", xi=0.5, sigma_h=10.0), {"prompt": torch.zeros(2, 3)}, RUN)
    heur.aggregate(1, {c: {"prompt": p} for c, p in prompts.items()}, dict.fromkeys(prompts, 1))
    cos = torch.stack([F.cosine_similarity(prompts[j].flatten(), prompts[0].flatten(), dim=0) for j in (1, 2, 3)])
    w = 0.5 * torch.softmax(10 * cos.double(), 0)
    u = 0.5 * prompts[0] + sum(float(w[i]) * prompts[j] for i, j in enumerate((1, 2, 3)))
    torch.testing.assert_close(heur.cloud(0)[0], u)
    att = FedAMPServer(FedAMP(variant="attentive", sigma=100.0, alpha=1.0), {"prompt": torch.zeros(2, 3)}, RUN)
    att.aggregate(1, {c: {"prompt": p} for c, p in prompts.items()}, dict.fromkeys(prompts, 1))
    d = torch.stack([(prompts[j] - prompts[0]).square().sum() for j in (1, 2, 3)]).double()
    xi = torch.exp(-d / 100) / 100  # small: no clamping
    u = (1 - xi.sum()) * prompts[0].double() + sum(xi[i] * prompts[j].double() for i, j in enumerate((1, 2, 3)))
    torch.testing.assert_close(att.cloud(0)[0], u.float())
    auto = FedAMPServer(FedAMP(variant="attentive", sigma="auto"), {"prompt": torch.zeros(2, 3)}, RUN)
    every = torch.stack([p.flatten() for p in prompts.values()]).double()
    pair = torch.pdist(every).square()
    assert FedAMPServer.auto_sigma(every[0], every[1:]) == pytest.approx(float(pair.median()))
    assert auto.cloud(7)[0].shape == (2, 3)  # never uploaded: w = init


def test_fedamp_sigma_takes_auto_or_a_number():
    assert parse_fit(["fit", "--method", "fedamp", "--method.sigma", "auto"])[0].method.sigma == "auto"
    assert parse_fit(["fit", "--method", "fedamp", "--method.sigma", "0.3"])[0].method.sigma == 0.3
