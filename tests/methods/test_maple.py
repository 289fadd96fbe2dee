"""MaPLe (fedmoap/methods/maple.py, spec-new-methods B3) on the tiny ViT: its coupling of vision to
text prompts (IVLP's, fedvpt.py, are independent), the shallow reduction and where gradients go."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from fedmoap.methods import registry
from tests.worlds import first_batch, tiny_client

REPO = Path(__file__).resolve().parents[2]


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


def test_deep_prompts_beyond_the_towers_are_refused(world):
    backbone = world[0]
    problems = registry()["maple"](depth=9).backbone_problems(backbone)
    assert any("method.depth 9" in p for p in problems)
    assert any("text_depth 5" in p for p in registry()["fedvpt"](text_depth=5).backbone_problems(backbone))


def test_paper_config_prompt_is_maples_a_photo_of_a_with_its_first_two_tokens_learned(world):
    """MaPLe's code tokenises "a photo of a {name}." and learns its first n_ctx = 2 tokens: the
    paper config (and the default) keep "of a {name}." after them."""
    knobs = yaml.safe_load((REPO / "configs/paper/methods/maple.yaml").read_text())["method"]["init_args"]
    for maple in (tiny_client(world, "maple", **{**knobs, "depth": 1}), tiny_client(world, "maple", depth=1)):
        bb, slots = maple.backbone, maple.slots
        tokens = bb.tokenizer([f"a photo of a {c}." for c in maple.classnames])[:, : slots.seq_len]
        with torch.no_grad():
            words = bb.text.token_embedding(tokens)
        assert slots.n_ctx == 2 and torch.equal(maple.ctx.data, words[0, 1:3])  # "a photo", learned
        assert torch.equal(slots.suffix, words[:, 3:]) and torch.equal(slots.prefix, words[:, :1])
        assert slots.extra["eot"].tolist() == tokens.argmax(-1).tolist()
