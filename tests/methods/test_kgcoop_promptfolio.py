"""KgCoOp and PromptFolio: their reductions to PromptFL / CoOp and their own terms, on the tiny
model (spec-new-methods A2 and B2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, tiny_client


def grads(module, loss):
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}


# ---------------------------------------------------------------------------------- PromptFolio
def test_promptfolio_at_theta_0_is_promptfl_and_leaves_the_local_prompt_alone(world):
    folio = tiny_client(world, "promptfolio", n_ctx=4, theta=0.0)
    fl = tiny_client(world, "promptfl", n_ctx=4)
    b = first_batch(world)
    assert torch.equal(folio.ctx, fl.ctx)
    assert torch.allclose(folio(b), fl(b), atol=1e-6)
    g = grads(folio, folio.training_step(b))
    assert g["local"].abs().max() == 0 and g["ctx"].abs().max() > 0


def test_promptfolio_at_theta_1_trains_only_the_local_prompt_as_coop_would(world):
    folio = tiny_client(world, "promptfolio", n_ctx=4, theta=1.0)
    coop = tiny_client(world, "coop", n_ctx=4)
    coop.ctx.data.copy_(folio.local.data)
    b = first_batch(world)
    assert torch.allclose(folio(b), coop(b), atol=1e-6)
    g = grads(folio, folio.training_step(b))
    assert g["ctx"].abs().max() == 0 and g["local"].abs().max() > 0
    assert set(folio.upload()) == {"prompt"} and torch.equal(folio.upload()["prompt"], folio.ctx.detach())


def test_promptfolio_mix_is_not_renormalised_and_never_trained_clients_use_the_global_prompt(world):
    folio = tiny_client(world, "promptfolio", n_ctx=4, theta=0.4)
    mixed = folio.mixed_text_features()
    assert (mixed.norm(dim=-1) < 1 - 1e-4).all()
    fresh = tiny_client(world, "promptfolio", n_ctx=4, theta=0.4)
    fresh.load_client(1, None)  # a client that never trained: theta falls back to unseen_theta 0
    assert fresh.theta == 0.0
    glob = fresh.text_features()
    assert torch.allclose(fresh.mixed_text_features(), glob, atol=1e-6)
    fresh.begin_adaptation()  # few-shot adaptation trains its local prompt: theta applies again
    assert fresh.theta == 0.4


# ---------------------------------------------------------------------------------- KgCoOp
def test_kgcoop_at_weight_0_is_promptfl(world):
    kg = tiny_client(world, "kgcoop", n_ctx=4, ctx_init=None, weight=0.0)
    fl = tiny_client(world, "promptfl", n_ctx=4)
    b = first_batch(world)
    assert torch.equal(kg.ctx, fl.ctx)
    assert torch.allclose(kg.training_step(b), F.cross_entropy(fl(b), b["label"]), atol=1e-6)


def test_kgcoop_term_vanishes_when_the_prompt_is_the_hand_crafted_one(world):
    kg = tiny_client(world, "kgcoop", ctx_init="a photo of a", template="{}.", weight=8.0)
    text = kg.text_features()
    gap = kg.knowledge_gap(text)
    assert abs(float(gap)) < 1e-5
    g = grads(kg, gap)
    assert g["ctx"].abs().max() < 1e-4


def test_kgcoop_term_pulls_the_prompt_and_scales_with_its_weight(world):
    b = first_batch(world)
    one = tiny_client(world, "kgcoop", n_ctx=4, ctx_init=None, weight=1.0)
    two = tiny_client(world, "kgcoop", n_ctx=4, ctx_init=None, weight=2.0)
    ce = F.cross_entropy(one(b), b["label"])
    g_ce = grads(one, ce)["ctx"]
    g1 = grads(one, one.training_step(b))["ctx"] - g_ce
    g2 = grads(two, two.training_step(b))["ctx"] - g_ce
    assert g1.abs().max() > 0
    assert torch.allclose(g2, 2 * g1, atol=1e-6, rtol=1e-4)


def test_kgcoop_anchor_follows_the_class_names(world):
    kg = tiny_client(world, "kgcoop", n_ctx=4, ctx_init=None)
    before = kg.anchor.clone()
    names = list(reversed(kg.classnames))
    kg.set_classnames(names)
    assert torch.allclose(kg.anchor, before.flip(0), atol=1e-6)


# ---------------------------------------------------------------------------------- ProGrad
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
