"""Fashion-MNIST from its original gzipped IDX files (Debian package ``dataset-fashion-mnist``).

The 70,000 images are stored in the ``datasets.Image`` column as binary PGM (netpbm "P5": a
13-byte header and the raw 28×28 pixels), which Pillow decodes to the same grayscale image a PNG
would give. Building them takes well under a second (PNG encoding takes ~9 s) and decoding is
about twice as fast as PNG, so nothing is cached on disk.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from fedmoap.errors import FedmoapError

__all__ = [
    "DEFAULT_DIR",
    "CLASS_NAMES",
    "SPLIT_FILES",
    "load_fashion_mnist",
    "load_fashion_mnist_with_id",
    "read_splits",
]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` installs the four IDX files."""
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
"""Label names in label order, as published with the dataset."""
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_SIDE = 28
_ID_VERSION = "fashion-mnist-v1"
_PGM_HEADER = f"P5\n{_SIDE} {_SIDE}\n255\n".encode()


def load_fashion_mnist(path: str | Path | None = None):
    """Fashion-MNIST as a ``datasets.DatasetDict`` with splits "train" (60,000) and "test" (10,000).

    Columns: ``image`` (``datasets.Image``, decoded to 28×28 grayscale PIL images) and ``label``
    (``datasets.ClassLabel`` named as :data:`CLASS_NAMES`). ``path`` is a directory holding the
    four IDX files (gzipped or not); default :data:`DEFAULT_DIR`.
    """
    return load_fashion_mnist_with_id(path)[0]


def load_fashion_mnist_with_id(path: str | Path | None = None):
    """(the ``DatasetDict`` of :func:`load_fashion_mnist`, its data id). The id is a digest of the
    decoded pixels and labels, so split files and caches carry over between machines, Python and
    ``datasets`` versions (``datasets``' own fingerprint of an in-memory table does not)."""
    import datasets

    root = Path(path) if path is not None else DEFAULT_DIR
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    h, splits = hashlib.sha256(_ID_VERSION.encode()), {}
    for split, images, labels in read_splits(root):
        h.update(images.tobytes())
        h.update(labels.tobytes())
        splits[split] = datasets.Dataset(
            _arrow_table(images, labels, features), info=datasets.DatasetInfo(features=features), split=split
        )
    return datasets.DatasetDict(splits), f"{_ID_VERSION}-{h.hexdigest()[:16]}"


def read_splits(root: Path):
    """Yield (split, images (N, 28, 28) uint8, labels (N,) uint8) for "train" and "test" from the
    IDX files in ``root``, checked (magic numbers, sizes, matching counts, labels 0..9)."""
    for split, (image_name, label_name) in SPLIT_FILES.items():
        images = _read_idx(_find(root, image_name), _IMAGE_MAGIC, (_SIDE, _SIDE))
        labels = _read_idx(_find(root, label_name), _LABEL_MAGIC, ())
        if len(images) != len(labels):
            raise FedmoapError(f"{root}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() >= len(CLASS_NAMES):
            raise FedmoapError(f"{root}: {split} labels go up to {labels.max()}, expected 0..9")
        yield split, images, labels


def _find(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise FedmoapError(
        f"Fashion-MNIST file {root / (name + '.gz')} not found: install it with "
        f"`apt-get install dataset-fashion-mnist` (it goes to {DEFAULT_DIR}) or pass a directory "
        f"holding the four IDX files ({', '.join(f for pair in SPLIT_FILES.values() for f in pair)})"
    )


def _read_idx(file: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Read an unsigned-byte IDX file: big-endian magic, one count per dimension, then the data."""
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise FedmoapError(f"cannot read {file}: {e}") from e
    ndim = 1 + len(item_shape)
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise FedmoapError(f"{file} is truncated ({len(raw)} bytes)")
    found, *dims = (int(v) for v in np.frombuffer(raw, ">u4", count=1 + ndim))
    if found != magic:
        raise FedmoapError(
            f"{file}: magic number {found}, expected {magic} (not an IDX file of "
            f"{'images' if item_shape else 'labels'})"
        )
    if tuple(dims[1:]) != item_shape:
        raise FedmoapError(f"{file}: items of shape {tuple(dims[1:])}, expected {item_shape}")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise FedmoapError(
            f"{file}: header announces {dims[0]} items ({expected} bytes), file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _arrow_table(images: np.ndarray, labels: np.ndarray, features):
    """Arrow table in ``features``' schema (image, label)."""
    import pyarrow as pa

    return pa.Table.from_arrays(
        [_image_column(images), pa.array(labels.astype(np.int64))], schema=features.arrow_schema
    )


def _image_column(images: np.ndarray):
    """(N, 28, 28) uint8 -> an Arrow image column: each image a PGM file, built without Python
    loops."""
    import pyarrow as pa

    n = len(images)
    item = len(_PGM_HEADER) + _SIDE * _SIDE
    data = np.empty((n, item), np.uint8)
    data[:, : len(_PGM_HEADER)] = np.frombuffer(_PGM_HEADER, np.uint8)
    data[:, len(_PGM_HEADER) :] = images.reshape(n, -1)
    offsets = np.arange(n + 1, dtype=np.int32) * item
    blobs = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.StructArray.from_arrays([blobs, pa.nulls(n, pa.string())], ["bytes", "path"])
