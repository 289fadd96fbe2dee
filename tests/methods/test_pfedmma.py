"""pFedMMA (spec-new-methods A6): adapters at zero are zero-shot, the gradient scaling, the shared
projection in both towers and the only upload, and the refusals, on the tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.methods.pfedmma import PFedMMA
from tests.worlds import first_batch, tiny_client

BLOCKS = {"text_blocks": [1, 2], "vision_blocks": [1, 2]}


def zero_shot(client, pixels):
    bb = client.backbone
    text = F.normalize(bb.model.encode_text(bb.tokenizer([f"a photo of a {c}." for c in client.classnames])), dim=-1)
    return bb.logit_scale * F.normalize(bb.model.encode_image(pixels), dim=-1) @ text.t()


def test_adapters_at_zero_are_the_frozen_towers(world):
    b = first_batch(world)
    for knobs in ({"scale": 0.0}, {}):
        mma = tiny_client(world, "pfedmma", **BLOCKS, **knobs)
        if not knobs:  # up projections at zero
            with torch.no_grad():
                for part in (*mma.text, *mma.vision):
                    part.up.weight.zero_(), part.up.bias.zero_()
        with torch.no_grad():
            bb = mma.backbone
            assert torch.equal(mma.image_features(b["pixels"]), F.normalize(bb.encode_image(b["pixels"]), dim=-1))
            bb.share_prefix = False
            plain_text = F.normalize(bb.encode_prompts(mma.slots), dim=-1)
            bb.share_prefix = True
            assert torch.equal(mma.text_features(), plain_text)
            torch.testing.assert_close(mma(b), zero_shot(mma, b["pixels"]), atol=1e-4, rtol=1e-5)


def test_default_scale_is_close_to_zero_shot_but_not_equal(world):
    b = first_batch(world)
    mma = tiny_client(world, "pfedmma", **BLOCKS)
    with torch.no_grad():
        gap = (mma(b) - zero_shot(mma, b["pixels"])).abs().max()
    assert 0 < gap < 0.5


def adapter_grads(world, scale, scaling=True):
    b = first_batch(world)
    mma = tiny_client(world, "pfedmma", **BLOCKS, scale=scale, gradient_scaling=scaling)
    with torch.no_grad():
        shift = (mma(b) - zero_shot(mma, b["pixels"])).abs().mean()
    mma.training_step(b).backward()
    grads = (mma.text[1].up.weight, mma.vision[0].down[0].weight, mma.shared[0][0].weight)
    return (*(p.grad.norm() for p in grads), shift)


def test_gradient_scaling_makes_adapter_gradients_independent_of_the_scale(world):
    small, large = adapter_grads(world, 1e-3), adapter_grads(world, 1e-2)
    for g_small, g_large in zip(small[:3], large[:3]):
        assert g_small > 0 and 0.9 < float(g_small / g_large) < 1.1
    assert 8 < float(large[3] / small[3]) < 12  # the forward perturbation scales with s
    plain_small, plain_large = adapter_grads(world, 1e-3, False), adapter_grads(world, 1e-2, False)
    for g_small, g_large, scaled in zip(plain_small[:3], plain_large[:3], small[:3]):
        assert 8 < float(g_large / g_small) < 12  # without it, gradients shrink with s
        torch.testing.assert_close(g_small, 1e-3 * scaled, rtol=1e-3, atol=0)


def test_the_shared_projection_serves_both_towers_and_is_the_only_upload(world):
    mma = tiny_client(world, "pfedmma", **BLOCKS)
    b = first_batch(world)
    mma.text_features().sum().backward()
    from_text = mma.shared[1][0].weight.grad.clone()
    assert from_text.abs().sum() > 0 and mma.vision[1].up.weight.grad is None
    mma.zero_grad()
    mma.image_features(b["pixels"]).sum().backward()
    assert mma.shared[1][0].weight.grad.abs().sum() > 0 and mma.text[1].up.weight.grad is None
    upload = mma.upload()
    assert set(upload) == {f"shared.{i}.0.{p}" for i in range(2) for p in ("weight", "bias")}
    assert sum(v.numel() for v in upload.values()) == 2 * (32 * 32 + 32)
    personal = {k: v.clone() for k, v in mma.state_dict().items() if not k.startswith("shared")}
    mma.receive({k: torch.randn_like(v) for k, v in upload.items()})
    assert all(torch.equal(v, mma.state_dict()[k]) for k, v in personal.items())
    assert not torch.equal(mma.upload()["shared.0.0.weight"], upload["shared.0.0.weight"])


def test_paper_sizes_at_vit_b16():
    """8 blocks of r = 32: 8,448 shared parameters, 666,112 personal (the spec's counts)."""
    method = PFedMMA()
    text = sum(p.numel() for p in torch.nn.Linear(512, 32).parameters()) + sum(
        p.numel() for p in torch.nn.Linear(32, 512).parameters()
    )
    vision = 768 * 32 + 32 + 32 * 768 + 768
    assert method.num_blocks * (32 * 32 + 32) == 8448
    assert method.num_blocks * (text + vision) == 666112


def test_refusals_name_the_culprit(world):
    rn = OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)
    (problem,) = PFedMMA(**BLOCKS).backbone_problems(rn)
    assert "needs transformer blocks in both towers" in problem and "none in its image tower" in problem
    text, image = PFedMMA().backbone_problems(world[0])
    assert text.startswith("method.text_blocks [5, 12]: the text tower of") and text.endswith("has 2 blocks")
    assert image.startswith("method.vision_blocks [5, 12]: the image tower of")
    assert PFedMMA(**BLOCKS).backbone_problems(world[0]) == []
    assert PFedMMA(text_blocks=[1, 2], vision_blocks=[2, 2]).problems() == [
        "method.text_blocks [1, 2] and method.vision_blocks [2, 2] must span as many blocks (they share projections)"
    ]
    assert PFedMMA(text_blocks=[0, 2]).problems()[0].startswith("method.text_blocks must be [first, last]")


@pytest.mark.parametrize("blocks", [([1, 1], [2, 2]), ([2, 2], [1, 1])])
def test_blocks_are_paired_in_order(world, blocks):
    mma = tiny_client(world, "pfedmma", text_blocks=blocks[0], vision_blocks=blocks[1])
    assert set(mma.adapters("text")) == {blocks[0][0] - 1} and set(mma.adapters("image")) == {blocks[1][0] - 1}
