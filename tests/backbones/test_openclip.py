"""The open_clip backbone: the truncated text path is exact and experts batch correctly."""

import pytest
import torch

from fedmoap.backbones.openclip import OpenCLIPBackbone, _attnpool_all
from fedmoap.errors import FedmoapError

NAMES = ["cat", "dog", "red panda", "airplane", "a very long class name with many words"]


@pytest.fixture(scope="module")
def backbone():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)


def test_zero_shot_prompts_equal_open_clip_encode_text(backbone):
    texts = [f"a photo of a {n}." for n in NAMES]
    slots = backbone.prepare_prompts(texts, n_ctx=0)
    ours = backbone.encode_prompts(slots)
    reference = backbone.model.encode_text(backbone.tokenizer(texts))
    assert slots.seq_len < 77  # truncated to the longest end-of-text position
    assert slots.seq_len == int(backbone.tokenizer(texts).argmax(-1).max()) + 1
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_context_from_words_reproduces_template(backbone):
    ctx = backbone.embed_tokens("a photo of a")
    assert ctx.shape == (4, backbone.ctx_width)
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=4)
    reference = backbone.model.encode_text(backbone.tokenizer([f"a photo of a {n}." for n in NAMES]))
    torch.testing.assert_close(backbone.encode_prompts(slots, ctx), reference, atol=1e-5, rtol=1e-5)


def test_batched_experts_equal_single_calls_and_carry_gradient(backbone):
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=3)
    experts = torch.randn(4, 3, backbone.ctx_width, requires_grad=True)
    batched = backbone.encode_prompts(slots, experts)
    assert batched.shape == (4, len(NAMES), backbone.embed_dim)
    for e in range(4):
        torch.testing.assert_close(batched[e], backbone.encode_prompts(slots, experts[e]))
    batched.sum().backward()
    assert experts.grad is not None and experts.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_truncation_is_cheaper(backbone):
    slots = backbone.prepare_prompts([f"{n}." for n in NAMES], n_ctx=16)
    assert slots.seq_len <= 16 + 12


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(FedmoapError, match="model.arch"):
        OpenCLIPBackbone.build("no-such-arch", None)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(FedmoapError, match="does not exist"):
        OpenCLIPBackbone.build("fedmoap-tiny-vit", str(tmp_path / "missing.pt"))


def test_local_checkpoint_loads(tmp_path, backbone):
    path = tmp_path / "tiny.pt"
    torch.save(backbone.model.state_dict(), path)
    other = OpenCLIPBackbone.build("fedmoap-tiny-vit", str(path), seed=123)
    assert other.image_fingerprint() == backbone.image_fingerprint()
    assert (
        OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=123).image_fingerprint() != backbone.image_fingerprint()
    )


def test_zero_adapters_leave_the_text_tower_exact_and_others_match_a_plain_loop(backbone):
    """``Backbone.adapted``: adapters returning zeros give open_clip's own text features; a
    non-zero one on block 1 equals ``block(x) + δ(block.ln_1(x))`` written out by hand."""
    texts = [f"a photo of a {n}." for n in NAMES]
    slots = backbone.prepare_prompts(texts, n_ctx=0)
    zero = {j: (lambda h: torch.zeros_like(h)) for j in range(len(backbone.adapter_blocks("text")))}
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenizer(texts))
        backbone.share_prefix = False
        full = backbone.encode_prompts(slots)
        backbone.share_prefix = True
        with backbone.adapted(text=zero):
            adapted = backbone.encode_prompts(slots)
        assert torch.equal(adapted, full)
        torch.testing.assert_close(adapted, reference, atol=1e-5, rtol=1e-5)

        delta = torch.nn.Linear(backbone.ctx_width, backbone.ctx_width)
        with backbone.adapted(text={1: delta}):
            got = backbone.encode_prompts(slots)
        t = backbone.text
        x = t.token_embedding(backbone.tokenizer(texts)[:, : slots.seq_len]) + t.positional_embedding[: slots.seq_len]
        mask = t.attn_mask[: slots.seq_len, : slots.seq_len]
        first, second = t.transformer.resblocks
        x = first(x, attn_mask=mask)
        x = second(x, attn_mask=mask) + delta(second.ln_1(x))
        want = t.ln_final(x)[torch.arange(len(texts)), slots.extra["eot"]] @ t.text_projection
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, reference, atol=1e-3)
    with pytest.raises(ValueError, match="text blocks \\[2\\]"):
        with backbone.adapted(text={2: delta}):
            pass
    assert backbone._adapting == 0 and not any(b._forward_hooks for b, _ in backbone.adapter_blocks("text"))


def test_the_tags_resize_mode_and_interpolation_are_used():
    from torchvision import transforms as T

    from fedmoap.backbones.openclip import OpenCLIPBackbone

    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None)
    backbone.resize_mode, backbone.interpolation = "squash", "bilinear"
    steps = backbone.image_transform(train=False).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    assert tuple(resize.size) == (32, 32) and resize.interpolation == T.InterpolationMode.BILINEAR
    backbone.resize_mode = "longest"
    assert "fill=0" in repr(backbone.image_transform(train=False))


def test_a_tokenizer_without_start_token_is_refused():
    from fedmoap.backbones.openclip import OpenCLIPBackbone

    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    clip_tokenizer = backbone.tokenizer
    # The CLIP tokenizer with its start token stripped: mT5's layout (no BOS, end-of-text pooling).
    backbone.tokenizer = lambda texts: torch.cat(
        [clip_tokenizer(texts)[:, 1:], torch.zeros(len(texts), 1, dtype=torch.long)], 1
    )
    with pytest.raises(FedmoapError, match="start token"):
        backbone.prepare_prompts(["cat.", "dog."], 4)
    with pytest.raises(FedmoapError, match="start token"):
        backbone.embed_tokens("a photo of a")
    backbone.tokenizer = clip_tokenizer
    backbone._start_checked = False
    slots = backbone.prepare_prompts(["cat.", "dog."], 4)
    assert slots.prefix.device == backbone.text.token_embedding.weight.device
    assert backbone.embed_tokens("a photo of a").shape[0] == 4


def test_modified_resnet_tokens_are_the_attention_pool_at_every_position():
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)
    x = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        every = _attnpool_all(backbone.model.visual, x)
        pooled = backbone.encode_image(x)
        tokens = backbone.encode_image_tokens(x)
    assert torch.equal(every[:, 0], pooled)  # position 0 = encode_image
    grid = backbone.model.visual.attnpool.positional_embedding.shape[0] - 1
    assert tokens.shape == (3, grid, backbone.embed_dim) and torch.equal(tokens, every[:, 1:])
