"""The attention gating network: shapes, parameter count, order invariance, reductions."""

import pytest
import torch

from fedmoap.methods.gating import AttentionGating, reduce_features


def test_parameter_count_matches_paper():
    assert sum(p.numel() for p in AttentionGating(1024).parameters()) == 66_048  # "66.0K"


def test_output_shape_and_any_number_of_experts():
    torch.manual_seed(0)
    g = AttentionGating(64, d_gating=32, heads=4)
    for experts in (1, 3, 10):
        out = g(torch.randn(5, 64), torch.randn(experts, 7, 64))
        assert out.shape == (5, 7, 32)


def test_invariant_to_expert_order():
    torch.manual_seed(0)
    g = AttentionGating(1024)
    image, experts = torch.randn(8, 1024), torch.randn(10, 6, 1024)
    perm = torch.randperm(10)
    torch.testing.assert_close(g(image, experts), g(image, experts[perm]))


def test_single_expert_returns_its_value_projection():
    torch.manual_seed(0)
    g = AttentionGating(64, d_gating=32, heads=4)
    experts = torch.randn(1, 3, 64)
    expected = g.out_proj(g.v_proj(g.reduce(experts[0])))
    torch.testing.assert_close(g(torch.randn(2, 64), experts), expected.expand(2, -1, -1))


def test_classes_are_attended_independently():
    torch.manual_seed(0)
    g = AttentionGating(64, d_gating=32, heads=4)
    image, experts = torch.randn(2, 64), torch.randn(4, 3, 64)
    changed = experts.clone()
    changed[:, 2] += 1.0
    a, b = g(image, experts), g(image, changed)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_reductions():
    x = torch.arange(16.0).view(1, 16)
    torch.testing.assert_close(reduce_features(x, 4), torch.tensor([[1.5, 5.5, 9.5, 13.5]]))
    torch.testing.assert_close(reduce_features(x, 4, "strided"), torch.tensor([[0.0, 4.0, 8.0, 12.0]]))
    assert reduce_features(torch.randn(3, 100), 32).shape == (3, 32)
    with pytest.raises(ValueError):
        reduce_features(torch.randn(3, 100), 32, "strided")


def test_attention_scale_option_changes_output():
    torch.manual_seed(0)
    a = AttentionGating(64, 32, 4)
    b = AttentionGating(64, 32, 4, attn_scale=10.0)
    b.load_state_dict(a.state_dict())
    image, experts = torch.randn(2, 64), torch.randn(3, 2, 64)
    assert not torch.allclose(a(image, experts), b(image, experts))
