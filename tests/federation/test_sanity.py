"""The zero-shot sanity gate (fedmoap/federation/sanity.py): numeric class names, and zero-shot
accuracy against chance on a seeded sample of the clients' test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.federation import sanity


class TextAlignedFeatures:
    """A feature cache whose test image i has the text features of class ``labels[i] + shift``:
    zero-shot classification is then exactly right (shift 0) or exactly wrong."""

    def __init__(self, backbone, source, shift: int) -> None:
        slots = backbone.prepare_prompts([sanity.TEMPLATE.format(c) for c in source.classnames], 0)
        with torch.no_grad():
            text = F.normalize(backbone.encode_prompts(slots), dim=-1)
        self.features = text[(torch.as_tensor(source.test_labels) + shift) % len(source.classnames)]
        self.asked: list[np.ndarray] = []

    def get(self, ds, data_id, rows, image_column):
        self.asked.append(rows)
        return self.features[torch.as_tensor(rows)]


@pytest.fixture(scope="module")
def setup():
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    return backbone, load_source(DataArgs(source="synthetic"))


def test_numeric_class_names_are_flagged():
    assert "every class name is a number (1, 2, 3, ...)" in sanity.numeric_names(["1", "2", "3", "4.5"])
    assert sanity.numeric_names(["1", "rose"]) is None and sanity.numeric_names([]) is None


def test_accuracy_above_chance_passes_and_at_chance_warns(setup):
    backbone, source = setup
    rows = np.arange(len(source.test_labels))
    chance = float(np.bincount(source.test_labels).max() / len(rows))
    right = sanity.zero_shot_check(backbone, source, rows, TextAlignedFeatures(backbone, source, 0), "image", 0)
    assert right == {"acc": 1.0, "chance": chance, "images": len(rows), "template": "a photo of a {}."}
    wrong = sanity.zero_shot_check(backbone, source, rows, TextAlignedFeatures(backbone, source, 1), "image", 0)
    assert wrong["acc"] == 0.0 and "at or below chance" in wrong["warning"]


def test_a_seeded_sample_of_distinct_rows(setup, monkeypatch):
    backbone, source = setup
    monkeypatch.setattr(sanity, "SAMPLE", 7)
    rows = np.concatenate([np.arange(30), np.arange(10)])  # repeated rows are looked at once
    cache = TextAlignedFeatures(backbone, source, 0)
    out = sanity.zero_shot_check(backbone, source, rows, cache, "image", seed=3)
    sampled = cache.asked[-1]
    assert out["images"] == 7 and len(set(sampled.tolist())) == 7 and (np.diff(sampled) > 0).all()
    sanity.zero_shot_check(backbone, source, rows, cache, "image", seed=3)
    assert np.array_equal(cache.asked[-1], sampled)
    none = sanity.zero_shot_check(backbone, source, np.array([], dtype=int), cache, "image", seed=3)
    assert none["images"] == 0 and np.isnan(none["acc"]) and "warning" not in none
