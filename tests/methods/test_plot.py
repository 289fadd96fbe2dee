"""PLOT (spec-new-methods B5): its reductions and its transport, on the tiny model's patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmoap.methods.fedotp import transport_plan
from tests.worlds import first_batch, tiny_client


def test_one_prompt_is_coop_on_the_mean_patch_feature(world):
    plot = tiny_client(world, "plot", n_ctx=4, num_prompts=1)
    b = first_batch(world)
    text = plot.text_features()[0]
    expected = plot.backbone.logit_scale * b["tokens"].mean(1) @ text.t()
    assert torch.allclose(plot(b), expected, atol=1e-5)


def test_plan_has_uniform_marginals_and_no_gradient(world):
    plot = tiny_client(world, "plot", n_ctx=4, num_prompts=3, thresh=1e-6, max_iter=1000)
    b = first_batch(world)
    sim = torch.einsum("bmd,ncd->bcmn", b["tokens"], plot.text_features())
    plan = transport_plan(sim, plot.method.eps, 1.0, False, 1000, 1e-6)
    m, n = sim.shape[-2:]
    assert torch.allclose(plan.sum(-1), torch.full(plan.shape[:-1], 1 / m), atol=1e-5)
    assert torch.allclose(plan.sum(-2), torch.full((*plan.shape[:-2], n), 1 / n), atol=1e-5)
    assert not plan.requires_grad
    plot(b).sum().backward()
    assert plot.ctx.grad.abs().sum(dim=(1, 2)).gt(0).all()  # every prompt learns


def test_two_prompts_match_fedotp_balanced_with_both_prompts_global(world):
    plot = tiny_client(world, "plot", n_ctx=4, num_prompts=2, thresh=1e-3)
    otp = tiny_client(world, "fedotp", n_ctx=4, ot="sinkhorn", gamma=1.0, thresh=1e-3)
    otp.ctx.data.copy_(plot.ctx.data[0])
    otp.local.data.copy_(plot.ctx.data[1])
    b = first_batch(world)
    assert torch.allclose(plot(b), otp(b), atol=1e-6)
    assert set(plot.upload()) == {"prompt"} and plot.upload()["prompt"].shape[0] == 2
    assert not torch.equal(plot.ctx.data[0], plot.ctx.data[1])
    F.cross_entropy(plot(b), b["label"]).backward()
