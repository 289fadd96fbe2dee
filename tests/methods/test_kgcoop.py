"""KgCoOp (fedmoap/methods/kgcoop.py): its reduction to PromptFL and its knowledge-gap term, on the
tiny model (spec-new-methods A2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, grads, tiny_client


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
