"""FedMVP (spec-new-methods A5): the PromptFormer's reduction to zero prompts, image-conditioning,
sentence scoring in label order, the consistency term, what is uploaded and trained, the own label
space, and the attribute files, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedmoap.data.fashion_mnist import CLASS_NAMES
from fedmoap.errors import FedmoapError
from fedmoap.methods.fedmvp import FedMVP, load_attributes, sentences, which_clause
from tests.worlds import first_batch, tiny_client

FASHION = Path(__file__).resolve().parents[2] / "fedmoap" / "data" / "attributes" / "fashion-mnist.json"


def attribute_file(tmp_path, names, reverse=False):
    data = {n: [f"feature {i} of {n}", f"part {i}"] for i, n in enumerate(names)}
    if reverse:
        data = {k: list(reversed(v)) for k, v in reversed(list(data.items()))}
    path = tmp_path / ("reversed.json" if reverse else "attributes.json")
    path.write_text(json.dumps(data))
    return str(path)


def test_zeroed_promptformer_gives_zero_prompts_and_a_zero_shot_head(world):
    b = first_batch(world)
    mvp = tiny_client(world, "fedmvp", alpha=0.0, label_space="all")
    with torch.no_grad():
        for layer in (mvp.former.cross.out_proj, mvp.former.ff.down):
            layer.weight.zero_(), layer.bias.zero_()
        patches = mvp.backbone.vit_embed(b["pixels"])[:, 1:]
        assert torch.equal(mvp.former(patches, mvp.texts[0]), torch.zeros(len(patches), 4, 64))
        bb = mvp.backbone
        zero = bb.encode_image_prompted(b["pixels"], [{0: torch.zeros(len(patches), 4, bb.vision_width)}])
        heads = bb.model.encode_text(bb.tokenizer([f"a photo of a {c}." for c in mvp.classnames]))
        want = bb.logit_scale * F.normalize(zero, dim=-1) @ F.normalize(heads, dim=-1).t()
        torch.testing.assert_close(mvp.predict({"pixels": b["pixels"]}), want, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(mvp.training_step(b), F.cross_entropy(want, b["label"]), atol=1e-5, rtol=1e-5)


def test_prompts_depend_on_the_image(world):
    mvp = tiny_client(world, "fedmvp")
    pixels = first_batch(world)["pixels"][:2]
    with torch.no_grad():
        u = mvp.former(mvp.backbone.vit_embed(pixels)[:, 1:], mvp.texts[0])
    assert u.shape == (2, 4, 64) and (u[0] - u[1]).abs().max() > 1e-4


def test_sentences_score_their_class_in_label_order(world, tmp_path):
    names = world[1]
    b = first_batch(world)
    forward = tiny_client(world, "fedmvp", attributes=attribute_file(tmp_path, names))
    shuffled = tiny_client(world, "fedmvp", attributes=attribute_file(tmp_path, names, reverse=True))
    texts, owner = sentences(names, forward.attributes, "a photo of a", "")
    assert texts[0] == f"a photo of a {names[0]}, which has feature 0 of {names[0]}" and owner[:3] == [0, 0, 1]
    with torch.no_grad():
        torch.testing.assert_close(forward.predict(b), shuffled.predict(b), atol=1e-5, rtol=1e-5)
        feats, _, _ = forward.texts
        image = forward.image_features(b["pixels"])
        want = forward.backbone.logit_scale * (image @ feats[2 * 3 : 2 * 4].t()).mean(1)
        torch.testing.assert_close(forward.predict(b)[:, 3], want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_consistency_term_against_the_frozen_flipped_image(world, flip):
    b = first_batch(world)
    mvp = tiny_client(world, "fedmvp", flip_prob=flip, label_space="all")
    with torch.no_grad():
        image = mvp.image_features(b["pixels"])
        ce = F.cross_entropy(mvp.logits(image), b["label"])
        frozen = F.normalize(mvp.backbone.encode_image(b["pixels"].flip(-1) if flip else b["pixels"]), dim=-1)
        want = ce + 10 * (1 - F.cosine_similarity(image, frozen, dim=-1).mean())
        torch.testing.assert_close(mvp.training_step(b), want, atol=1e-5, rtol=1e-5)


def test_uploads_the_promptformer_and_trains_it_alone_on_its_own_classes(world):
    b = first_batch(world)
    mvp = tiny_client(world, "fedmvp")
    assert set(mvp.upload()) == set(mvp.former.state_dict())
    mvp.own = torch.tensor([0, 1])
    mvp.training_step(b).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mvp.former.parameters())
    assert all(p.grad is None for p in mvp.backbone.parameters())
    probs = mvp(b).softmax(-1)
    assert torch.all(probs[:, 2:] == 0)
    assert mvp.predict({"pixels": b["pixels"]}).isfinite().all()  # evaluation: every class


def test_attribute_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cat": "furry"}))
    with pytest.raises(FedmoapError, match="method.attributes: .* must be a JSON object"):
        load_attributes(str(bad))
    assert FedMVP(attributes=str(tmp_path / "none.json")).problems() == [
        f"method.attributes: no such file {tmp_path / 'none.json'}"
    ]
    assert which_clause("short sleeves") == "which has short sleeves"
    assert which_clause("often has a hood") == "which often has a hood"
    assert which_clause("used for sport") == "which is used for sport"
    fashion = load_attributes(str(FASHION))
    assert list(fashion) == CLASS_NAMES and all(len(v) >= 5 for v in fashion.values())
    texts, _ = sentences(CLASS_NAMES, fashion, "a photo of a", "")
    assert texts[0] == "a photo of a T-shirt/top, which has short sleeves or no sleeves" and len(texts) == 60
