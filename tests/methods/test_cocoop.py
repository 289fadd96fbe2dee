"""CoCoOp (spec-new-methods B1): image-conditioned contexts, batched through the shared-prefix
encoder and exact against the reference's per-image full-length encoding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.worlds import first_batch, tiny_client


def test_zero_meta_net_is_promptfl(world):
    co = tiny_client(world, "cocoop", n_ctx=4, ctx_init=None)
    fl = tiny_client(world, "promptfl", n_ctx=4)
    with torch.no_grad():
        co.meta_net[2].weight.zero_()
        co.meta_net[2].bias.zero_()
    b = first_batch(world)
    assert torch.equal(co.ctx, fl.ctx)
    assert torch.allclose(co(b), fl(b), atol=1e-5)


def test_each_image_gets_its_own_context(world):
    co = tiny_client(world, "cocoop", n_ctx=4)
    feats = first_batch(world)["features"][:2]
    ctx = co.image_contexts(torch.stack([feats[0], feats[1], feats[0]]))
    assert not torch.equal(ctx[0], ctx[1]) and torch.equal(ctx[0], ctx[2])
    assert torch.allclose(ctx - co.ctx, (ctx - co.ctx)[:, :1].expand_as(ctx))  # one bias per image


def test_batched_logits_equal_the_reference_per_image_full_length_encoding(world):
    """One shared-prefix call for the batch against the reference's loop: per image, the C
    full-length (77-token, unshared) prompts of its own context."""
    co = tiny_client(world, "cocoop", n_ctx=4)
    b = first_batch(world)
    batched = co(b)
    bb = co.backbone
    assert bb.encode_shared_prefix(co.slots, co.image_contexts(b["features"])) is not None  # the path used
    share, trunc = bb.share_prefix, bb.truncate
    try:
        bb.share_prefix, bb.truncate = False, False
        slots = bb.prepare_prompts([co.method.template.format(c) for c in co.classnames], 4)
        rows = []
        for feat in b["features"]:
            ctx = co.image_contexts(feat[None])[0]
            text = F.normalize(bb.encode_prompts(slots, ctx), dim=-1)
            rows.append(bb.logit_scale * feat @ text.t())
    finally:
        bb.share_prefix, bb.truncate = share, trunc
    assert torch.allclose(batched, torch.stack(rows), atol=1e-5)
    co.begin_eval()
    assert torch.allclose(co.predict({"features": b["features"]}), batched, atol=1e-6)


def test_upload_is_the_context_and_the_meta_net_and_both_learn(world):
    co = tiny_client(world, "cocoop", n_ctx=4)
    up = co.upload()
    assert set(up) == {"prompt", "meta_net.0.weight", "meta_net.0.bias", "meta_net.2.weight", "meta_net.2.bias"}
    b = first_batch(world)
    co.training_step(b).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in co.parameters())
