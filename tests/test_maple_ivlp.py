"""MaPLe and IVLP (spec-new-methods B3) on the tiny ViT: MaPLe's coupling of vision to text
prompts, IVLP's independence, shallow reductions and where gradients go."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worlds import tiny_world

from fedmoap.config import TrainArgs
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("cache"), 2)


def client(world, name, **knobs):
    backbone, names, _ = world
    run = RunContext(0, 2, TrainArgs(local_epochs=1, batch_size=4), False)
    module = registry()[name](**knobs).build_client(backbone, names, run)
    module.load_client(0, None)
    module.receive(module.global_init())
    return module


def batch(world):
    return next(iter(world[2].train_batches(0, 1, 4)(0)))


def test_shallow_maple_vision_prompt_is_the_projected_text_prompt(world):
    maple = client(world, "maple", n_ctx=2, depth=1)
    (block, tokens), = maple.vision_prompts().items()
    assert block == 0 and torch.equal(tokens, maple.proj[0](maple.ctx))
    words = maple.backbone.embed_tokens("a photo of a")[:2]
    assert torch.equal(maple.ctx.data, words)


def test_maple_couples_vision_to_text_and_ivlp_does_not(world):
    b = batch(world)
    maple = client(world, "maple", n_ctx=2, depth=2)
    ivlp = client(world, "fedvpt", n_ctx=2, vision_tokens=2, vision_depth=2, text_depth=2)
    with torch.no_grad():
        img_m, img_i = maple.image_features(b["pixels"]), ivlp.image_features(b["pixels"])
        maple.deep_text.add_(0.1)
        ivlp.deep_text.add_(0.1)
        assert not torch.allclose(maple.image_features(b["pixels"]), img_m)
        assert torch.equal(ivlp.image_features(b["pixels"]), img_i)
    assert maple.proj[1].weight.equal(client(world, "maple", n_ctx=2, depth=3).proj[2].weight)


def test_gradient_reaches_every_prompt_and_map_within_the_depth(world):
    b = batch(world)
    maple = client(world, "maple", n_ctx=2, depth=2)
    F.cross_entropy(maple(b), b["label"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in maple.parameters())
    ivlp = client(world, "fedvpt", n_ctx=2, vision_tokens=2, vision_depth=2, text_depth=2)
    F.cross_entropy(ivlp(b), b["label"]).backward()
    assert ivlp.deep_text.grad.abs().sum() > 0 and set(ivlp.upload()) == {"prompt", "deep_text", "vision"}


def test_ivlp_at_depth_one_is_fedvpt(world):
    b = batch(world)
    plain = client(world, "fedvpt", n_ctx=2, vision_tokens=2)
    ivlp = client(world, "fedvpt", n_ctx=2, vision_tokens=2, text_depth=1)
    assert torch.equal(plain(b), ivlp(b)) and not hasattr(ivlp, "deep_text")


def test_deep_prompts_beyond_the_towers_are_refused(world):
    backbone = world[0]
    problems = registry()["maple"](depth=9).backbone_problems(backbone)
    assert any("method.depth 9" in p for p in problems)
    assert any("text_depth 5" in p for p in registry()["fedvpt"](text_depth=5).backbone_problems(backbone))
