"""ProGrad (fedmoap/methods/prograd.py): the gradient projection and its reduction to PromptFL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, grads, tiny_client


def test_prograd_projection_removes_only_the_conflicting_component():
    from fedmoap.methods.prograd import project

    g_kl = torch.tensor([1.0, 0.0, 0.0])
    agree = torch.tensor([0.5, 2.0, 0.0])
    assert torch.equal(project(agree, g_kl, 1.0), agree)
    conflict = torch.tensor([-0.5, 2.0, 1.0])
    out = project(conflict, g_kl, 1.0)
    assert torch.allclose(out, torch.tensor([0.0, 2.0, 1.0])) and float(out @ g_kl) == 0
    assert torch.allclose(project(conflict, g_kl, 0.5), torch.tensor([-0.25, 2.0, 1.0]))


def test_prograd_step_applies_the_projected_gradient_exactly(world):
    from fedmoap.methods.prograd import project

    pg = tiny_client(world, "prograd", n_ctx=4, tail_init="a photo of a")
    b = first_batch(world)
    words = pg.backbone.embed_tokens("a photo of a")
    assert torch.equal(pg.ctx[-len(words) :], words[-4:]) if len(words) <= 4 else True
    ce, kl = pg.losses(b)
    (g_ce,) = torch.autograd.grad(ce, pg.ctx, retain_graph=True)
    (g_kl,) = torch.autograd.grad(kl, pg.ctx)
    applied = grads(pg, pg.training_step(b))["ctx"]
    assert torch.equal(applied, project(g_ce, g_kl, 1.0))
    if float((g_ce * g_kl).sum()) < 0:
        assert abs(float((applied * g_kl).sum())) < 1e-6 * float(g_kl.norm() * g_ce.norm())
    else:
        assert torch.equal(applied, g_ce)


def test_prograd_distill_at_weight_0_is_promptfl(world):
    pg = tiny_client(world, "prograd", n_ctx=4, tail_init=None, mode="distill", weight=0.0)
    fl = tiny_client(world, "promptfl", n_ctx=4)
    b = first_batch(world)
    assert torch.allclose(pg.training_step(b), F.cross_entropy(fl(b), b["label"]), atol=1e-6)
