"""Vision prompts inside the image tower (``Backbone.encode_image_prompted``): exact without
prompts, gradients reach only the prompts, deep prompts equal a hand-written loop over the
blocks, and towers without tokens refuse with the architecture's name."""

import pytest
import torch

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.errors import FedmoapError


@pytest.fixture(scope="module")
def tiny():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)


@pytest.fixture(scope="module")
def vit_b16():
    """The paper's ViT-B-16 architecture with random weights."""
    return OpenCLIPBackbone.build("ViT-B-16", None, seed=0)


def images(backbone, n=2, seed=0):
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["tiny", "vit_b16"])
def test_no_prompt_equals_open_clip_encode_image(request, name):
    backbone = request.getfixturevalue(name)
    x = images(backbone)
    with torch.no_grad():
        reference = backbone.model.encode_image(x)
        pooled, tokens = backbone.encode_image_prompted(x, return_tokens=True)
        shallow_zero = backbone.encode_image_prompted(x, [{0: torch.zeros(0, backbone.vision_width)}])
    assert (pooled - reference).abs().max() <= 1e-5
    assert (shallow_zero - reference).abs().max() <= 1e-5
    grid = (backbone.image_size // backbone.model.visual.patch_size[0]) ** 2
    assert tokens.shape == (2, grid, backbone.embed_dim)


def test_gradients_reach_the_prompts_and_nothing_else(tiny):
    shallow = torch.randn(4, tiny.vision_width, requires_grad=True)
    deep = torch.randn(2, 3, tiny.vision_width, requires_grad=True)
    out = tiny.encode_image_prompted(images(tiny), [{0: shallow}, {0: deep[0], 1: deep[1]}])
    out.square().sum().backward()
    assert shallow.grad.abs().sum() > 0 and deep.grad[0].abs().sum() > 0 and deep.grad[1].abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_deep_prompts_match_a_plain_loop_over_the_blocks(tiny):
    v = tiny.model.visual
    x = images(tiny, n=3, seed=1)
    p0, p1 = torch.randn(2, 5, tiny.vision_width).unbind(0)
    with torch.no_grad():
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(3, 1, -1), h], 1) + v.positional_embedding
        n = h.shape[1]
        h = v.ln_pre(torch.cat([h, p0.expand(3, -1, -1)], 1))
        h = v.transformer.resblocks[0](h)
        h = torch.cat([h[:, :n], p1.expand(3, -1, -1)], 1)  # layer 1: the deep tokens replace
        h = v.transformer.resblocks[1](h)
        reference = v.ln_post(h[:, 0]) @ v.proj
        ours = tiny.encode_image_prompted(x, [{0: p0, 1: p1}])
    assert (ours - reference).abs().max() <= 1e-5
    assert not torch.allclose(ours, tiny.encode_image(x))


def test_prompt_inserted_at_a_later_block_and_per_sample_tokens(tiny):
    x = images(tiny, n=2)
    per_sample = torch.randn(2, 3, tiny.vision_width)
    with torch.no_grad():
        both = tiny.encode_image_prompted(x, [{1: per_sample}])
        first = tiny.encode_image_prompted(x[:1], [{1: per_sample[0]}])
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="blocks"):
        tiny.encode_image_prompted(x, [{5: per_sample}])


def test_towers_without_tokens_refuse_with_their_name():
    resnet = OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)
    with pytest.raises(FedmoapError, match="ModifiedResNet"):
        resnet.encode_image_prompted(images(resnet), [{0: torch.zeros(2, 8)}])


@pytest.mark.parametrize(
    "name,knob", [("fedvpt", "vision_depth"), ("pfeddc", "vision_depth"), ("pepfedpt", "shared_depth")]
)
def test_vision_prompt_methods_refuse_a_cnn_and_too_deep_prompts(name, knob):
    from fedmoap.methods import registry

    method = registry()[name]
    (problem,) = method().backbone_problems(OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0))
    assert f"method {name} needs a ViT image tower" in problem and "ModifiedResNet" in problem
    tiny = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    assert method().backbone_problems(tiny) == []
    (problem,) = method(**{knob: tiny.vision_layers + 1}).backbone_problems(tiny)
    assert problem == f"method.{knob} {tiny.vision_layers + 1} exceeds the image tower's {tiny.vision_layers} blocks"


def test_zero_adapters_leave_the_image_tower_exact_and_others_match_a_plain_loop(tiny):
    """``Backbone.adapted`` on the image tower: zeros give open_clip's ``encode_image`` (with and
    without prompt tokens); an adapter on block 0 equals ``block(x) + δ(block.ln_1(x))``."""
    v = tiny.model.visual
    x = images(tiny, n=3, seed=2)
    zero = {j: (lambda h: h * 0) for j in range(tiny.vision_layers)}
    prompt = torch.randn(2, tiny.vision_width)
    delta = torch.nn.Linear(tiny.vision_width, tiny.vision_width)
    with torch.no_grad():
        plain, prompted = tiny.model.encode_image(x), tiny.encode_image_prompted(x, [{0: prompt}])
        with tiny.adapted(image=zero):
            assert torch.equal(tiny.model.encode_image(x), plain)
            assert torch.equal(tiny.encode_image_prompted(x, [{0: prompt}]), prompted)
        with tiny.adapted(image={0: delta}):
            got = tiny.encode_image(x)
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = v.ln_pre(torch.cat([v.class_embedding.expand(3, 1, -1), h], 1) + v.positional_embedding)
        first, second = v.transformer.resblocks
        h = second(first(h) + delta(first.ln_1(h)))
        want = v.ln_post(h[:, 0]) @ v.proj
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
    resnet = OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)
    assert resnet.adapter_blocks("image") == [] and len(resnet.adapter_blocks("text")) == 2
