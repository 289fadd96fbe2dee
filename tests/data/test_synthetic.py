"""The generated dataset (fedmoap/data/synthetic.py): sizes, balanced classes named by colour, two
background domains, and a pure function of the seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedmoap.data.synthetic import COLOURS, make_synthetic, synthetic_id


def test_splits_have_the_asked_sizes_and_balanced_colour_classes():
    ds = make_synthetic(num_classes=3, train_per_class=4, test_per_class=2, size=12, seed=0)
    assert ds["train"].features["label"].names == ["red", "green", "blue"]
    assert np.bincount(ds["train"]["label"]).tolist() == [4, 4, 4]
    assert np.bincount(ds["test"]["label"]).tolist() == [2, 2, 2]
    assert set(ds["train"]["domain"]) <= {0, 1}
    image = ds["train"][0]["image"]
    assert image.size == (12, 12) and image.mode == "RGB"


def test_a_light_domain_has_a_light_background():
    ds = make_synthetic(num_classes=2, train_per_class=8, test_per_class=1, size=24, seed=1)
    for row in ds["train"]:
        corners = np.asarray(row["image"])[[0, 0, -1, -1], [0, -1, 0, -1]]  # the square never covers all four
        mean = float(np.median(corners))
        assert (mean > 120) if row["domain"] == 0 else (mean < 120)


def test_the_data_are_a_pure_function_of_the_seed():
    one = make_synthetic(2, 3, 1, 8, seed=5)["train"]
    two = make_synthetic(2, 3, 1, 8, seed=5)["train"]
    other = make_synthetic(2, 3, 1, 8, seed=6)["train"]
    pixels = lambda ds: np.stack([np.asarray(img) for img in ds["image"]])  # noqa: E731
    assert np.array_equal(pixels(one), pixels(two)) and one["label"] == two["label"]
    assert not np.array_equal(pixels(one), pixels(other))
    assert synthetic_id(2, 3, 1, 8, 5) == "synthetic-v1-2-3-1-8-5" != synthetic_id(2, 3, 1, 8, 6)


@pytest.mark.parametrize("classes", [0, len(COLOURS) + 1])
def test_class_counts_outside_the_colours_are_refused(classes):
    with pytest.raises(ValueError, match="num_classes must be in"):
        make_synthetic(num_classes=classes)
