"""The shared-prefix text encoder is exact: features and context gradients equal the full
truncated path and open_clip's ``encode_text`` (fp32, max abs diff <= 1e-5)."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import TextTransformer

from fedmoap.backbones.openclip import OpenCLIPBackbone, _shares_prefix_exactly

NAMES = ["cat", "red panda", "a very long class name with many words", "x", "sea lion"]
TOL = 1e-5
TINY_VISION = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8}


def _text_backbone(arch: str) -> OpenCLIPBackbone:
    """``arch``'s text tower (random weights, biases and norms perturbed so they matter) with a tiny
    image tower: building the real one would only cost time."""
    cfg = open_clip.get_model_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(cfg["embed_dim"], TINY_VISION, cfg["text_cfg"])
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1 and not name.startswith("visual"):
                    p.add_(torch.randn_like(p) * 0.1)
    backbone = OpenCLIPBackbone(model, open_clip.get_tokenizer(arch), f"{arch}-text")
    assert backbone._prefix_ok
    return backbone


@pytest.fixture(scope="module", params=["RN50", "ViT-B-16"])
def backbone(request) -> OpenCLIPBackbone:
    return _text_backbone(request.param)


def _both(backbone: OpenCLIPBackbone, fn):
    """``fn()`` with the shared prefix, then with the full sequences."""
    backbone.share_prefix = True
    try:
        shared = fn()
        backbone.share_prefix = False
        return shared, fn()
    finally:
        backbone.share_prefix = True


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_context_from_words_equals_encode_text(backbone):
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=4)
    ctx = backbone.embed_tokens("a photo of a")
    reference = backbone.model.encode_text(backbone.tokenizer([f"a photo of a {n}." for n in NAMES]))
    shared, full = _both(backbone, lambda: backbone.encode_prompts(slots, ctx))
    assert backbone.encode_shared_prefix(slots, ctx[None]) is not None  # the shared path did run
    assert _max_diff(shared, reference) <= TOL and _max_diff(full, reference) <= TOL
    assert _max_diff(shared, full) <= TOL


def test_zero_shot_prompts_equal_encode_text(backbone):
    texts = [f"a photo of a {n}." for n in NAMES]
    slots = backbone.prepare_prompts(texts, n_ctx=0)
    reference = backbone.model.encode_text(backbone.tokenizer(texts))
    shared, full = _both(backbone, lambda: backbone.encode_prompts(slots))
    assert _max_diff(shared, reference) <= TOL and _max_diff(shared, full) <= TOL


@pytest.mark.parametrize("experts", [None, 3])
def test_features_and_context_gradients_equal_full_path(backbone, experts):
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=16)
    gen = torch.Generator().manual_seed(1)
    shape = (16, backbone.ctx_width) if experts is None else (experts, 16, backbone.ctx_width)
    ctx0 = torch.randn(shape, generator=gen) * 0.02
    images = F.normalize(torch.randn(8, backbone.embed_dim, generator=gen), dim=-1)
    labels = torch.randint(len(NAMES), (8,), generator=gen)

    def run():  # CLIP's classification loss, so that the gradients have a training step's scale
        ctx = ctx0.clone().requires_grad_()
        feats = backbone.encode_prompts(slots, ctx)
        logits = backbone.logit_scale * images @ F.normalize(feats, dim=-1).transpose(-1, -2)
        F.cross_entropy(logits.reshape(-1, len(NAMES)), labels.repeat(experts or 1)).backward()
        return feats.detach(), ctx.grad

    (f_shared, g_shared), (f_full, g_full) = _both(backbone, run)
    assert f_shared.shape == f_full.shape == (*shape[:-2], len(NAMES), backbone.embed_dim)
    assert _max_diff(f_shared, f_full) <= TOL
    assert g_full.abs().max() > 1e-3 and _max_diff(g_shared, g_full) <= min(TOL, 1e-4 * g_full.abs().max())
    assert all(p.grad is None for p in backbone.parameters())
    if experts:  # a batch of experts equals one call per expert
        for e in range(experts):
            assert _max_diff(f_shared[e], backbone.encode_prompts(slots, ctx0[e])) <= TOL


def test_bf16_autocast_stays_close():
    # this CPU has no bf16 matrix units: the tiny model (same blocks) keeps the test fast
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=4)
    ctx0 = backbone.embed_tokens("a photo of a")

    def run():
        ctx = ctx0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = backbone.encode_prompts(slots, ctx)
        feats.float().sum().backward()
        return feats.float().detach(), ctx.grad

    (f_shared, g_shared), (f_full, g_full) = _both(backbone, run)
    assert backbone.encode_shared_prefix(slots, ctx0[None]) is not None
    assert torch.isfinite(g_shared).all() and g_shared.abs().max() > 0
    torch.testing.assert_close(f_shared, f_full, atol=0.05, rtol=0.05)
    torch.testing.assert_close(g_shared, g_full, atol=0.05 * float(g_full.abs().max()), rtol=0.05)


def test_other_towers_keep_the_full_path():
    def tower(**kwargs) -> TextTransformer:
        return TextTransformer(width=32, heads=2, layers=1, output_dim=16, **kwargs)

    assert _shares_prefix_exactly(tower())
    assert not _shares_prefix_exactly(tower(no_causal_mask=True))  # bidirectional
    assert not _shares_prefix_exactly(tower(qk_norm=True))  # CustomResidualAttentionBlock


def test_prompts_with_different_starts_keep_the_full_path():
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=2)
    ctx = torch.randn(1, 2, backbone.ctx_width)
    assert backbone.encode_shared_prefix(slots, ctx) is not None
    slots.prefix[1] += 1.0
    assert backbone.encode_shared_prefix(slots, ctx) is None
    backbone.share_prefix = False
    assert backbone.encode_shared_prefix(slots.to("cpu"), ctx) is None
