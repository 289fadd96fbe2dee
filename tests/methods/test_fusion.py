"""pFedDC's cross-fusion module (fedmoap/methods/fusion.py): multi-head cross-attention with a
residual, exactly ``torch.nn.MultiheadAttention`` at the full width, with its initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedmoap.methods.fusion import CrossFusion


def test_initialisation_is_multihead_attentions():
    """Xavier-uniform over the stacked q/k/v projection (bound sqrt(6 / (W + 3 dim))), zero biases."""
    torch.manual_seed(0)
    fusion = CrossFusion(64, 4, dim=32)
    bound = math.sqrt(6.0 / (64 + 3 * 32))
    stacked = torch.cat([fusion.q.weight, fusion.k.weight, fusion.v.weight]).detach()
    assert stacked.shape == (96, 64) and float(stacked.abs().max()) <= bound
    assert float(stacked.abs().max()) > 0.9 * bound  # uniform over the whole range, not a narrower one
    for lin in (fusion.q, fusion.k, fusion.v, fusion.o):
        assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    assert fusion.o.weight.shape == (64, 32) and fusion.gain is None


def test_a_width_the_heads_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        CrossFusion(64, 3)


def test_the_normed_variant_adds_a_gained_layer_norm_of_the_attention():
    torch.manual_seed(0)
    plain, normed = CrossFusion(16, 2), CrossFusion(16, 2, norm=True)
    normed.load_state_dict({**plain.state_dict(), "gain": normed.gain.detach()}, strict=True)
    assert float(normed.gain.detach()) == pytest.approx(0.1)
    query, context = torch.randn(3, 16), torch.randn(5, 16)
    attention = plain(query, context) - query
    expected = query + 0.1 * F.layer_norm(attention, (16,))
    torch.testing.assert_close(normed(query, context), expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        normed.gain.zero_()
    assert torch.equal(normed(query, context), query)  # gain 0: the query alone


def test_cross_fusion_is_multihead_attention():
    torch.manual_seed(0)
    fusion = CrossFusion(64, 4)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([fusion.q.weight, fusion.k.weight, fusion.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([fusion.q.bias, fusion.k.bias, fusion.v.bias]))
        mha.out_proj.weight.copy_(fusion.o.weight)
        mha.out_proj.bias.copy_(fusion.o.bias)
    local, glob = torch.randn(5, 64), torch.randn(7, 64)
    reference = local + mha(local[None], glob[None], glob[None], need_weights=False)[0][0]
    torch.testing.assert_close(fusion(local, glob), reference, atol=1e-5, rtol=1e-5)
    assert CrossFusion(64, 4, dim=16)(local, glob).shape == (5, 64)
