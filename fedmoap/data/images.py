"""Decoding a dataset's images, with one line naming the image that cannot be decoded.

A corrupt or truncated file, a missing image (``None``) or one larger than Pillow's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) stops the run with
:class:`BadImage` naming the row, its file where it has one, and the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset, Image

from fedmoap.errors import FedmoapError

__all__ = ["BadImage", "load_images"]


class BadImage(FedmoapError):
    """An image of the dataset cannot be decoded."""


def load_images(ds: Dataset, rows: np.ndarray, column: str, data_id: str) -> list[Any]:
    """The decoded images of rows ``rows`` of ``ds`` (``data_id`` names the split in errors)."""
    rows = [int(r) for r in rows]
    try:
        images = list(ds.select(rows)[column])  # a lazy column decodes while listed
    except Exception as exc:  # Pillow and datasets raise many kinds for one bad image
        images, failure = None, exc
    else:
        if all(img is not None for img in images):
            return images
        failure = None
    for row in rows:  # find the culprit
        try:
            img = ds[row][column]
            reason = None if img is not None else "no image (None)"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if reason:
            file = _file(ds, row, column)
            raise BadImage(
                f"image {row} of {data_id} (column {column!r}{f', file {file}' if file else ''}) "
                f"cannot be decoded ({reason}); repair or remove it"
            )
    if failure is not None:
        raise failure
    return images


def _file(ds: Dataset, row: int, column: str) -> str | None:
    """The file an image came from, where the dataset records one."""
    try:
        raw = ds.cast_column(column, Image(decode=False))[row][column]
        return raw.get("path") if isinstance(raw, dict) else None
    except Exception:
        return None
