"""The learnable text prompt (fedmoap/methods/prompts.py): its initial value, its checks against
the text tower, and its class-agnostic context carried over to new class names."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmoap.methods.prompts import PromptMethod, initial_prompt
from tests.worlds import tiny_client


def test_the_initial_prompt_is_the_words_or_seeded_noise(world):
    backbone = world[0]
    words = initial_prompt(backbone, PromptMethod(ctx_init="a photo of a"), 0)
    assert torch.equal(words, backbone.embed_tokens("a photo of a"))
    noise = initial_prompt(backbone, PromptMethod(n_ctx=5), 3)
    assert noise.shape == (5, backbone.ctx_width) and 0.01 < float(noise.std()) < 0.03
    assert torch.equal(noise, initial_prompt(backbone, PromptMethod(n_ctx=5), 3))
    assert not torch.equal(noise, initial_prompt(backbone, PromptMethod(n_ctx=5), 4))


def test_knob_and_context_length_problems(world):
    backbone = world[0]
    assert PromptMethod().problems() == []
    assert PromptMethod(n_ctx=0).problems() == ["method.n_ctx must be >= 1"]
    assert PromptMethod(n_ctx=0, ctx_init="a photo").problems() == []
    assert PromptMethod(template="a photo.").problems() == ["method.template must contain {} for the class name"]
    limit = backbone.text_context_length
    assert PromptMethod(n_ctx=limit - 3).context_problems(backbone) == []
    (problem,) = PromptMethod(n_ctx=limit - 2).context_problems(backbone)
    assert problem.startswith(f"method.n_ctx {limit - 2} does not fit ") and f"at most {limit - 3}" in problem


def test_the_context_carries_over_to_new_class_names(world):
    client = tiny_client(world, "promptfl", n_ctx=4)
    with torch.no_grad():
        client.ctx.add_(torch.randn(client.ctx.shape, generator=torch.Generator().manual_seed(0)))
    names = ["zebra", "kite"]
    client.set_classnames(names)
    bb = client.backbone
    expected = F.normalize(bb.encode_prompts(bb.prepare_prompts([f"{n}." for n in names], 4), client.ctx), dim=-1)
    assert client.num_classes == 2
    torch.testing.assert_close(client.text_features(), expected)
    stack = torch.stack([client.ctx.detach(), torch.zeros_like(client.ctx)])
    assert client.text_features(stack).shape == (2, 2, bb.embed_dim)
