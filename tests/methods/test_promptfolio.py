"""PromptFolio (fedmoap/methods/promptfolio.py): its reductions to PromptFL and CoOp at theta 0 and
1, and its mix of the global and local prompts."""

from __future__ import annotations

import torch

from tests.worlds import first_batch, grads, tiny_client


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
