"""Zero-shot CLIP (fedmoap/methods/zeroshot.py): the hand-written prompts' logits are open_clip's
``encode_text`` of those prompts, for new class names too; nothing is trained or sent."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmoap.methods.zeroshot import ZeroShot
from tests.worlds import first_batch, tiny_client


def reference_logits(client, features: torch.Tensor, names: list[str], prompt: str) -> torch.Tensor:
    """open_clip's zero-shot classifier: logit scale x cosine with ``encode_text`` of the prompts."""
    bb = client.backbone
    with torch.no_grad():
        text = F.normalize(bb.model.encode_text(bb.tokenizer([prompt.format(c) for c in names])), dim=-1)
    return bb.logit_scale * features @ text.t()


def test_logits_are_open_clips_zero_shot_classifier(world):
    client = tiny_client(world, "zeroshot", prompt="a blurry photo of a {}.")
    batch = first_batch(world)
    expected = reference_logits(client, batch["features"], client.classnames, "a blurry photo of a {}.")
    torch.testing.assert_close(client(batch), expected, atol=1e-4, rtol=1e-4)
    client.begin_eval()
    torch.testing.assert_close(client.predict(batch), expected, atol=1e-4, rtol=1e-4)
    assert list(client.parameters()) == [] and client.upload() == {}


def test_new_class_names_get_their_own_prompts(world):
    client = tiny_client(world, "zeroshot")
    client.begin_eval()
    names = ["zebra", "red panda", "kite"]
    client.set_classnames(names)
    features = first_batch(world)["features"]
    client.begin_eval()
    expected = reference_logits(client, features, names, "a photo of a {}.")
    torch.testing.assert_close(client.predict({"features": features}), expected, atol=1e-4, rtol=1e-4)


def test_a_prompt_without_a_class_slot_is_a_problem():
    assert ZeroShot().problems() == [] and not ZeroShot.trains
    assert ZeroShot(prompt="a photo").problems() == ["method.prompt must contain {} for the class name"]
