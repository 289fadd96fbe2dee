"""PromptFL+FedPer (fedmoap/methods/fedper.py): which context tokens are shared, what comes and
goes, and the never-trained client's personal tokens."""

from __future__ import annotations

import pytest
import torch

from fedmoap.config.sections import TrainArgs
from fedmoap.methods.base import HeldOut, RunContext
from fedmoap.methods.fedper import FedPer
from fedmoap.methods.prompts import initial_prompt

RUN = RunContext(0, 2, TrainArgs(), True)


def client(world, **knobs):
    backbone, names, _ = world
    module = FedPer(**{"n_ctx": 6, **knobs}).build_client(backbone, names, RUN)
    module.load_client(0, None)
    return module


@pytest.mark.parametrize(
    "knobs,shared",
    [
        ({}, [True] * 3 + [False] * 3),
        ({"personal_side": "start"}, [False] * 3 + [True] * 3),
        ({"personal_tokens": 1}, [True] * 5 + [False]),
        ({"personal_tokens": 0}, [True] * 6),
    ],
)
def test_the_personal_tokens_sit_where_the_knobs_say(world, knobs, shared):
    assert client(world, **knobs).shared.tolist() == shared


def test_only_the_shared_tokens_come_and_go(world):
    m = client(world)
    init = initial_prompt(m.backbone, m.method, 0)
    assert torch.equal(m.ctx.detach(), init)
    assert torch.equal(m.global_init()["shared"], init[:3])
    sent = torch.randn(3, m.backbone.ctx_width, generator=torch.Generator().manual_seed(0))
    m.receive({"shared": sent})
    assert torch.equal(m.ctx.detach()[:3], sent) and torch.equal(m.ctx.detach()[3:], init[3:])
    up = m.upload()
    assert list(up) == ["shared"] and torch.equal(up["shared"], sent)


def test_a_never_trained_client_takes_the_peers_mean_personal_tokens(world):
    m = client(world)
    width = m.backbone.ctx_width
    shared, peers = torch.ones(3, width), torch.full((6, width), 2.0)

    def held(peer_mean):
        return HeldOut(0, 1, lambda upload: {"shared": shared}, lambda n, s: None, torch.zeros(0), peer_mean)

    m.prepare_unseen(held(lambda: {"ctx": peers}))
    assert torch.equal(m.ctx.detach(), torch.cat([shared, peers[3:]]))
    m.load_client(1, None)
    m.prepare_unseen(held(lambda: None))  # no client keeps any yet: the initial personal tokens
    assert torch.equal(m.ctx.detach(), torch.cat([shared, initial_prompt(m.backbone, m.method, 0)[3:]]))


def test_personal_tokens_beyond_the_context_are_problems(world):
    assert FedPer(n_ctx=4, personal_tokens=4).problems() == []
    assert FedPer(n_ctx=4, personal_tokens=5).problems() == ["method.personal_tokens must be in 0..n_ctx (4), got 5"]
    assert FedPer(n_ctx=4, personal_tokens=-1).problems()
    (problem,) = FedPer(ctx_init="a photo of a", personal_tokens=5).backbone_problems(world[0])
    assert problem == "method.personal_tokens 5 exceeds the context's 4 tokens"
