"""The shape-agnostic FedAvg helper every FedAvg-style server uses."""
import pytest
import torch

from fedmoap.methods.base import weighted_mean


def test_three_dimensional_uploads_with_as_many_participants_as_layers():
    layers = 3  # the case where a per-row broadcast would silently pick the wrong axis
    gen = torch.Generator().manual_seed(0)
    uploads = {c: {"vision": torch.randn(layers, 4, 5, generator=gen),
                   "prompt": torch.randn(6, 5, generator=gen)} for c in (2, 7, 9)}
    weights = {2: 10, 7: 30, 9: 60}
    mean = weighted_mean(uploads, weights)
    for key in ("vision", "prompt"):
        expected = sum(weights[c] * uploads[c][key].double() for c in uploads) / 100
        assert mean[key].dtype == torch.float32 and mean[key].shape == uploads[2][key].shape
        torch.testing.assert_close(mean[key].double(), expected, atol=1e-6, rtol=1e-6)


def test_one_participant_is_returned_unchanged_and_float64_accumulation():
    x = {"p": torch.tensor([1e8, 1.0, -1e8], dtype=torch.float32)}
    assert torch.equal(weighted_mean({0: x}, {0: 5})["p"], x["p"])
    two = weighted_mean({0: {"p": torch.tensor([1e8 + 8])}, 1: {"p": torch.tensor([1.0])}}, {0: 1, 1: 1})
    assert two["p"].item() == pytest.approx((1e8 + 8 + 1) / 2)


def test_keys_must_agree():
    with pytest.raises(ValueError, match="uploaded"):
        weighted_mean({0: {"a": torch.zeros(1)}, 1: {"b": torch.zeros(1)}}, {0: 1, 1: 1})
