"""What every backbone shares (fedmoap/backbones/base.py): prompt slots, the pixel path equal to the
evaluation transform, and prompts refused where the tower cannot place them. Vision prompts and
adapters inside the towers are tested in test_vision_prompts.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fedmoap.backbones.openclip import OpenCLIPBackbone


@pytest.fixture(scope="module")
def backbone():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)


def test_prompt_slots_lay_out_prefix_context_and_suffix(backbone):
    slots = backbone.prepare_prompts(["cat.", "red panda."], 3)
    assert slots.num_prompts == 2 and slots.n_ctx == 3
    assert slots.seq_len == slots.prefix.shape[1] + 3 + slots.suffix.shape[1]
    moved = slots.to("cpu")
    assert torch.equal(moved.prefix, slots.prefix) and moved.extra.keys() == slots.extra.keys()


def test_cached_pixels_normalised_are_the_evaluation_transform(backbone):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    pixels = backbone.pixel_transform()(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, backbone.image_size, backbone.image_size)
    expected = backbone.image_transform(train=False)(image)
    torch.testing.assert_close(backbone.normalize_pixels(pixels[None].float() / 255)[0], expected)


def test_prompts_the_tower_cannot_place_are_refused(backbone):
    x = torch.zeros(1, 3, backbone.image_size, backbone.image_size)
    width, blocks = backbone.vision_width, backbone.vision_layers
    with pytest.raises(ValueError, match=f"prompt tokens for blocks \\[{blocks}\\]: the tower has {blocks}"):
        backbone.encode_image_prompted(x, [{blocks: torch.zeros(2, width)}])
    with pytest.raises(ValueError, match="prompt group 0: 3 tokens at block 1, 2 before"):
        backbone.encode_image_prompted(x, [{0: torch.zeros(2, width), 1: torch.zeros(3, width)}])
