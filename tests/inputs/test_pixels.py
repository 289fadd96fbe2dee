"""The pixel provider: decoded images cached once as uint8, the plain view equal to the feature
cache's input, and seeded tensor augmentation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.data.synthetic import make_synthetic, synthetic_id
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.pixels import SCALE, PixelCache, augment, crop_params


@pytest.fixture(scope="module")
def backbone():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)


@pytest.fixture(scope="module")
def ds():
    return make_synthetic(num_classes=3, train_per_class=6, test_per_class=2)["train"]


def test_cache_decodes_each_image_once_and_grows(tmp_path, backbone, ds):
    cache = PixelCache(tmp_path, backbone)
    rows, images = cache.get(ds, synthetic_id(), np.array([5, 1, 3]), "image")
    assert rows.tolist() == [1, 3, 5] and images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    assert cache.computed == 3
    rows2, images2 = cache.get(ds, synthetic_id(), np.array([0, 3, 5, 7]), "image")
    assert cache.computed == 5 and rows2.tolist() == [0, 1, 3, 5, 7]
    assert np.array_equal(images2[[1, 2, 3]], images)
    again = PixelCache(tmp_path, backbone)
    again.get(ds, synthetic_id(), np.array([0, 7]), "image")
    assert again.computed == 0  # all from disk


def test_plain_view_feeds_the_image_tower_exactly_as_the_feature_cache(tmp_path, backbone, ds):
    rows = np.arange(8)
    _, images = PixelCache(tmp_path, backbone).get(ds, synthetic_id(), rows, "image")
    x = backbone.normalize_pixels(torch.from_numpy(np.array(images)).float() / 255)
    with torch.no_grad():
        ours = F.normalize(backbone.encode_image(x), dim=-1)
    cached = FeatureCache(tmp_path, backbone).get(ds, synthetic_id(), rows, "image")
    assert (ours - cached).abs().max() <= 1e-5


def test_augmentation_is_seeded_bounded_and_varied():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1


def test_crop_parameters_follow_random_resized_crop():
    gen = torch.Generator().manual_seed(0)
    fractions = []
    for _ in range(500):
        top, left, h, w = crop_params(40, 30, gen)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        fractions.append(h * w / (40 * 30))
    assert SCALE[0] * 0.8 <= min(fractions) and max(fractions) <= SCALE[1]
    assert np.mean(fractions) == pytest.approx(np.mean(SCALE), abs=0.1)
