"""Decoding a dataset's images (fedmoap/data/images.py): a missing or undecodable image stops the
run with one error naming its row, its file and the reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

from fedmoap.data.images import BadImage, load_images
from fedmoap.errors import FedmoapError


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (4, 4), colour).save(out, format="PNG")
    return out.getvalue()


def dataset(images: list) -> Dataset:
    return Dataset.from_dict({"img": images}, features=Features({"img": Image()}))


def test_good_images_decode_in_the_rows_order():
    ds = dataset([{"bytes": png((255, 0, 0)), "path": "a.png"}, {"bytes": png((0, 0, 255)), "path": "b.png"}])
    images = load_images(ds, np.array([1, 0]), "img", "train")
    assert [img.getpixel((0, 0)) for img in images] == [(0, 0, 255), (255, 0, 0)]


def test_a_corrupt_file_is_named_with_its_row_and_file():
    ds = dataset([{"bytes": png((255, 0, 0)), "path": "a.png"}, {"bytes": b"not an image", "path": "broken.png"}])
    with pytest.raises(BadImage, match=r"image 1 of train \(column 'img', file broken.png\) cannot be decoded \(") as e:
        load_images(ds, np.array([0, 1]), "img", "train")
    assert isinstance(e.value, FedmoapError) and "\n" not in str(e.value)
    assert load_images(ds, np.array([0]), "img", "train")[0].getpixel((0, 0)) == (255, 0, 0)  # the others decode


def test_a_missing_image_is_named():
    ds = dataset([{"bytes": png((0, 255, 0)), "path": "a.png"}, None])
    with pytest.raises(BadImage, match=r"image 1 of test \(column 'img'\) cannot be decoded \(no image \(None\)\)"):
        load_images(ds, np.array([0, 1]), "img", "test")
