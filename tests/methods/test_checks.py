"""Backbone checks methods share (fedmoap/methods/checks.py): vision prompts need a ViT image
tower deep enough, deep text prompts a text tower deep enough."""

from __future__ import annotations

import pytest

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.methods.checks import text_depth_problems, vision_prompt_problems


@pytest.fixture(scope="module")
def vit():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)


@pytest.fixture(scope="module")
def resnet():
    return OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)


def test_vision_prompts_fit_the_towers_blocks_and_no_more(vit):
    blocks = vit.vision_layers
    assert vision_prompt_problems("fedvpt", vit, "vision_depth", blocks) == []
    (problem,) = vision_prompt_problems("fedvpt", vit, "vision_depth", blocks + 1)
    assert problem == f"method.vision_depth {blocks + 1} exceeds the image tower's {blocks} blocks"


def test_vision_prompts_need_a_vit(resnet):
    assert resnet.vision_width is None
    (problem,) = vision_prompt_problems("maple", resnet, "depth", 1, hint=" or a hint")
    assert problem.startswith("method maple needs a ViT image tower: ")
    assert resnet.describe() in problem and problem.endswith("packaged-vit or a hint)")


def test_deep_text_prompts_fit_the_text_towers_blocks(vit, resnet):
    blocks = vit.text_layers
    assert text_depth_problems(vit, 1) == [] and text_depth_problems(vit, blocks) == []
    (problem,) = text_depth_problems(vit, blocks + 1, knob="depth")
    assert problem.startswith(f"method.depth {blocks + 1}: ") and f"at most {blocks} blocks" in problem
    assert text_depth_problems(resnet, 1) == []  # depth 1 is the plain prompt: any text tower
