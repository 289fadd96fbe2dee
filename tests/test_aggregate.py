"""fedmoap.aggregate: the shape-agnostic FedAvg helper every FedAvg-style server uses, and the
size of a payload on the wire."""

import pytest
import torch

from fedmoap.aggregate import payload_bytes, weighted_mean


def test_three_dimensional_uploads_with_as_many_participants_as_layers():
    layers = 3  # the case where a per-row broadcast would silently pick the wrong axis
    gen = torch.Generator().manual_seed(0)
    uploads = {
        c: {"vision": torch.randn(layers, 4, 5, generator=gen), "prompt": torch.randn(6, 5, generator=gen)}
        for c in (2, 7, 9)
    }
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


def test_payload_bytes_counts_raw_tensor_data_of_every_dtype():
    payload = {
        "prompt": torch.zeros(4, 8),
        "half": torch.zeros(3, dtype=torch.float16),
        "ids": torch.zeros(2, dtype=torch.int64),
    }
    assert payload_bytes(payload) == 4 * 8 * 4 + 3 * 2 + 2 * 8
    assert payload_bytes({}) == 0


def test_the_method_api_path_still_names_them():
    """Method files import the helpers from fedmoap.methods.base; that path keeps working."""
    from fedmoap.methods import base, checks

    assert base.weighted_mean is weighted_mean and base.payload_bytes is payload_bytes
    assert base.vision_prompt_problems is checks.vision_prompt_problems
    assert base.text_depth_problems is checks.text_depth_problems
