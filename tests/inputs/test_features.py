"""The image-feature cache: keys, partial computation, reuse, corrupt files."""

import numpy as np
import pytest
import torch

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.data.synthetic import make_synthetic, synthetic_id
from fedmoap.errors import FedmoapError
from fedmoap.inputs.features import FeatureCache


@pytest.fixture(scope="module")
def setup():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0), make_synthetic(train_per_class=4, test_per_class=2)


def test_features_match_direct_encoding_and_are_reused(tmp_path, setup):
    backbone, data = setup
    ds = data["train"]
    cache = FeatureCache(tmp_path, backbone, batch_size=7)
    rows = np.array([5, 1, 9, 1])
    feats = cache.get(ds, "d", rows, "image")
    transform = backbone.image_transform(train=False)
    with torch.no_grad():
        direct = backbone.encode_image(torch.stack([transform(ds[int(r)]["image"]) for r in rows]))
    torch.testing.assert_close(feats, torch.nn.functional.normalize(direct, dim=-1), atol=1e-5, rtol=1e-4)
    assert cache.computed == 3
    again = FeatureCache(tmp_path, backbone, batch_size=7).get(ds, "d", np.array([9, 5, 2]), "image")
    torch.testing.assert_close(again[:2], feats[[2, 0]])
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_keys_change_with_view_tower_and_data(tmp_path, setup):
    backbone, _ = setup
    cache = FeatureCache(tmp_path, backbone)
    other = FeatureCache(tmp_path, OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=1))
    keys = {
        cache.key("d", "image", 0, 0),
        cache.key("d", "image", 1, 0),
        cache.key("d", "image", 2, 0),
        cache.key("d", "image", 1, 1),
        cache.key("e", "image", 0, 0),
        other.key("d", "image", 0, 0),
        cache.key("d", "image2", 0, 0),
        FeatureCache(tmp_path, backbone, tokens=True).key("d", "image", 0, 0),
        FeatureCache(tmp_path, backbone, batch_size=8).key("d", "image", 0, 0),
    }
    assert len(keys) == 9
    assert cache.key("d", "image", 0, 0) == cache.key("d", "image", 0, 5)  # the plain view ignores the view seed


def test_another_image_column_is_another_cache_entry(tmp_path, setup):
    """Features of column ``image2`` are not those of ``image`` read from the cache."""
    from PIL import ImageOps

    backbone, data = setup
    from datasets import Image

    ds = data["test"].select(range(4))
    inverted = [ImageOps.invert(img.convert("RGB")) for img in ds["image"]]
    ds = ds.add_column("image2", [{"bytes": None, "path": None}] * 4).cast_column("image2", Image())
    ds = ds.map(lambda _, i: {"image2": inverted[i]}, with_indices=True)
    cache = FeatureCache(tmp_path, backbone)
    first = cache.get(ds, "d", np.arange(4), "image")
    second = cache.get(ds, "d", np.arange(4), "image2")
    cold = FeatureCache(tmp_path / "cold", backbone).get(ds, "d", np.arange(4), "image2")
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, cold)


def test_augmented_views_are_deterministic_and_differ(tmp_path, setup):
    backbone, data = setup
    rows = np.arange(6)
    a = FeatureCache(tmp_path / "a", backbone).get(data["train"], "d", rows, "image", view=1)
    b = FeatureCache(tmp_path / "b", backbone).get(data["train"], "d", rows, "image", view=1)
    c = FeatureCache(tmp_path / "a", backbone).get(data["train"], "d", rows, "image", view=2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_corrupt_cache_file_is_reported(tmp_path, setup):
    backbone, data = setup
    cache = FeatureCache(tmp_path, backbone)
    cache.get(data["test"], "d", np.arange(3), "image")
    path = next(tmp_path.glob("*.pt"))
    path.write_bytes(b"garbage")
    with pytest.raises(FedmoapError, match="corrupt"):
        cache.get(data["test"], "d", np.arange(3), "image")
    assert path.read_bytes() == b"garbage"


def test_synthetic_id_names_its_parameters():
    assert synthetic_id() != synthetic_id(seed=1)


def test_cached_rows_are_read_without_the_lock_and_missing_ones_name_the_cache(tmp_path, setup):
    """A cache that cannot take its lock file (a read-only file system; here a folder where the
    lock file would go, which even root cannot open for writing) serves every row it holds, and
    asking for more is one error naming data.feature_cache."""
    backbone, data = setup
    first = FeatureCache(tmp_path, backbone).get(data["test"], "d", np.arange(3), "image")
    path = next(tmp_path.glob("*.pt"))
    path.with_suffix(".lock").unlink()
    path.with_suffix(".lock").mkdir()
    again = FeatureCache(tmp_path, backbone).get(data["test"], "d", np.array([2, 0]), "image")
    torch.testing.assert_close(again, first[[2, 0]])
    with pytest.raises(FedmoapError, match=r"data.feature_cache: 2 entries .* not cached yet"):
        FeatureCache(tmp_path, backbone).get(data["test"], "d", np.arange(5), "image")


@pytest.mark.parametrize("blob", ["list", "unsorted_rows", "rows_features_mismatch"])
def test_cache_file_of_another_structure_is_reported(tmp_path, setup, blob):
    """A readable torch file that is not a feature table (rows must be sorted: they are found by
    bisection) is refused, not silently misread."""
    backbone, data = setup
    cache = FeatureCache(tmp_path, backbone)
    feats = cache.get(data["test"], "d", np.arange(3), "image")
    path = next(tmp_path.glob("*.pt"))
    rows = torch.arange(3)
    torch.save(
        {
            "list": [rows, feats],
            "unsorted_rows": {"format": 2, "rows": rows.flip(0), "features": feats},
            "rows_features_mismatch": {"format": 2, "rows": rows, "features": feats[:2]},
        }[blob],
        path,
    )
    with pytest.raises(FedmoapError, match="corrupt"):
        FeatureCache(tmp_path, backbone).get(data["test"], "d", np.arange(3), "image")


def test_a_preempted_encode_keeps_what_it_encoded(tmp_path, monkeypatch):
    import fedmoap.inputs.features as features
    from fedmoap.backbones.openclip import OpenCLIPBackbone
    from fedmoap.data.synthetic import make_synthetic
    from fedmoap.preemption import Preempted

    monkeypatch.setattr(features, "FLUSH_ROWS", 4)
    calls = []
    cache = features.FeatureCache(
        tmp_path, OpenCLIPBackbone.build("fedmoap-tiny-vit", None), stop=lambda: bool(calls.append(1)) or len(calls) > 1
    )
    ds = make_synthetic(num_classes=2, train_per_class=5, test_per_class=1)["train"]
    with pytest.raises(Preempted):
        cache.get(ds, "d", np.arange(10), "image")
    again = features.FeatureCache(tmp_path, cache.backbone)
    again.get(ds, "d", np.arange(10), "image")
    assert again.computed == 6  # the first 4 rows were on disk


@pytest.mark.parametrize("tokens", [False, True])
def test_a_rows_features_do_not_depend_on_the_rows_encoded_with_it(tmp_path, tokens):
    """Runs fill a shared cache in whatever order they run; a row's cached features must be those
    of its image alone, bit for bit, or a study's numbers would depend on which runs came first."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    ds = make_synthetic(train_per_class=4, test_per_class=2)["train"]
    rows = np.arange(10)
    together = FeatureCache(tmp_path / "a", backbone, batch_size=4, tokens=tokens).get(ds, "d", rows, "image")
    apart = FeatureCache(tmp_path / "b", backbone, batch_size=4, tokens=tokens)
    apart.get(ds, "d", np.array([3]), "image")
    apart.get(ds, "d", np.array([7, 8]), "image")
    assert torch.equal(apart.get(ds, "d", rows, "image"), together)
