"""MaPLe and IVLP (spec-new-methods B3) on the tiny ViT: MaPLe's coupling of vision to text
prompts, IVLP's independence, shallow reductions and where gradients go."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, tiny_client

from fedmoap.methods import registry


def test_shallow_maple_vision_prompt_is_the_projected_text_prompt(world):
    maple = tiny_client(world, "maple", batch_size=4, n_ctx=2, depth=1)
    ((block, tokens),) = maple.vision_prompts().items()
    assert block == 0 and torch.equal(tokens, maple.proj[0](maple.ctx))
    words = maple.backbone.embed_tokens("a photo of a")[:2]
    assert torch.equal(maple.ctx.data, words)


def test_maple_couples_vision_to_text_and_ivlp_does_not(world):
    b = first_batch(world, 4)
    maple = tiny_client(world, "maple", batch_size=4, n_ctx=2, depth=2)
    ivlp = tiny_client(world, "fedvpt", batch_size=4, n_ctx=2, vision_tokens=2, vision_depth=2, text_depth=2)
    with torch.no_grad():
        img_m, img_i = maple.image_features(b["pixels"]), ivlp.image_features(b["pixels"])
        maple.deep_text.add_(0.1)
        ivlp.deep_text.add_(0.1)
        assert not torch.allclose(maple.image_features(b["pixels"]), img_m)
        assert torch.equal(ivlp.image_features(b["pixels"]), img_i)
    assert maple.proj[1].weight.equal(tiny_client(world, "maple", batch_size=4, n_ctx=2, depth=3).proj[2].weight)


def test_gradient_reaches_every_prompt_and_map_within_the_depth(world):
    b = first_batch(world, 4)
    maple = tiny_client(world, "maple", batch_size=4, n_ctx=2, depth=2)
    F.cross_entropy(maple(b), b["label"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in maple.parameters())
    ivlp = tiny_client(world, "fedvpt", batch_size=4, n_ctx=2, vision_tokens=2, vision_depth=2, text_depth=2)
    F.cross_entropy(ivlp(b), b["label"]).backward()
    assert ivlp.deep_text.grad.abs().sum() > 0 and set(ivlp.upload()) == {"prompt", "deep_text", "vision"}


def test_ivlp_at_depth_one_is_fedvpt(world):
    b = first_batch(world, 4)
    plain = tiny_client(world, "fedvpt", batch_size=4, n_ctx=2, vision_tokens=2)
    ivlp = tiny_client(world, "fedvpt", batch_size=4, n_ctx=2, vision_tokens=2, text_depth=1)
    assert torch.equal(plain(b), ivlp(b)) and not hasattr(ivlp, "deep_text")


def test_deep_prompts_beyond_the_towers_are_refused(world):
    backbone = world[0]
    problems = registry()["maple"](depth=9).backbone_problems(backbone)
    assert any("method.depth 9" in p for p in problems)
    assert any("text_depth 5" in p for p in registry()["fedvpt"](text_depth=5).backbone_problems(backbone))
