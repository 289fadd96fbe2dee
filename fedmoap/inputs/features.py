"""On-disk cache of frozen image features.

A method whose image path is frozen never runs the image tower while training: features are
computed once per (image-tower weights, dataset split, transform, view) and stored under a key that
changes when any of these changes. A cache file holds the rows computed so far; asking for new rows
computes only those and rewrites the file atomically, so few-shot runs never encode a whole
dataset. Methods whose image path is trained (vision prompts) do not use this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.data.images import load_images
from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_torch_save, cache_lock
from fedmoap.preemption import Preempted
from fedmoap.seeding import derive_seed

__all__ = ["CACHE_FORMAT", "FLUSH_ROWS", "FeatureCache"]

CACHE_FORMAT = 3
FLUSH_ROWS = 4096
"""Rows encoded between two writes of a cache file (and two checks of the stop flag)."""


class FeatureCache:
    """L2-normalised image features of dataset rows, cached on disk.

    Args:
        root: cache directory.
        backbone: the frozen backbone whose image tower makes the features.
        batch_size: images per image-tower forward pass.
        device: where the image tower runs.
    """

    def __init__(
        self,
        root: Path,
        backbone: Backbone,
        batch_size: int = 32,
        device: torch.device | str = "cpu",
        tokens: bool = False,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.backbone = backbone
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tower = backbone.image_fingerprint()
        self.tokens = tokens
        """Cache per-patch token features (N, T, D) instead of pooled ones (N, D)."""
        self.stop = stop
        """Asked between chunks of encoding: a preemption signal stops the set-up there."""
        self.computed = 0
        """Rows encoded by this object (the rest came from disk)."""

    def key(self, data_id: str, image_column: str, view: int, view_seed: int) -> str:
        """Cache key: image tower, data split and image column, the transform's full description,
        view and seed, and the encode batch size (the last bits of a feature depend on it)."""
        transform = repr(self.backbone.image_transform(train=view > 0))
        text = (
            f"{CACHE_FORMAT}|{self.tower}|{data_id}|{image_column}|{transform}|{view}|"
            f"{view_seed if view else ''}|{self.batch_size}"
        )
        text += "|tokens" if self.tokens else ""
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(
        self, ds: Dataset, data_id: str, indices: np.ndarray, image_column: str, view: int = 0, view_seed: int = 0
    ) -> Tensor:
        """Features of rows ``indices`` of ``ds`` (float32, L2-normalised, CPU), in that order.

        ``view`` 0 is the plain (test) transform; view v >= 1 is the v-th augmented view, whose
        random crop and flip derive from (view_seed, row, v) alone.
        """
        indices = np.asarray(indices, dtype=np.int64)
        path = self.root / f"{self.key(data_id, image_column, view, view_seed)}.pt"
        rows, feats = self._load(path)  # files are replaced atomically: readable without the lock
        if np.isin(indices, rows.numpy()).all():  # all cached: nothing to write, no lock needed
            return feats[torch.searchsorted(rows, torch.from_numpy(indices))]
        with cache_lock(path, "data.feature_cache", len(np.setdiff1d(indices, rows.numpy()))):
            rows, feats = self._load(path)
            missing = np.setdiff1d(np.unique(indices), rows.numpy())
            for start in range(0, len(missing), FLUSH_ROWS):  # saved as it goes: a preempted
                if self.stop():  # set-up keeps what it encoded
                    raise Preempted(
                        "stopped by a signal while filling the feature cache; "
                        "re-run to continue (rows encoded so far are cached)"
                    )
                chunk = missing[start : start + FLUSH_ROWS]
                new = self._encode(ds, data_id, chunk, image_column, view, view_seed)
                rows = torch.cat([rows, torch.from_numpy(chunk)])
                feats = torch.cat([feats, new]) if len(feats) else new
                order = rows.argsort()
                rows, feats = rows[order], feats[order]
                atomic_torch_save(path, {"format": CACHE_FORMAT, "rows": rows, "features": feats})
        pos = torch.searchsorted(rows, torch.from_numpy(indices))
        return feats[pos]

    def _load(self, path: Path) -> tuple[Tensor, Tensor]:
        if not path.exists() and not path.is_symlink():
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0)
        try:
            blob = torch.load(path, weights_only=True)
            rows, feats = blob["rows"], blob["features"]
            if (
                blob["format"] != CACHE_FORMAT
                or not isinstance(rows, Tensor)
                or not isinstance(feats, Tensor)
                or rows.ndim != 1
                or feats.ndim < 2
                or len(rows) != len(feats)
                or not bool((rows[1:] > rows[:-1]).all())
            ):  # sorted: rows are looked up by bisection
                raise ValueError("not a feature table of this format")
            return rows, feats
        except Exception as exc:
            raise FedmoapError(f"feature cache file {path} is corrupt ({exc!r}); delete it to recompute") from None

    @torch.no_grad()
    def _encode(
        self, ds: Dataset, data_id: str, rows: np.ndarray, image_column: str, view: int, view_seed: int
    ) -> Tensor:
        transform = self.backbone.image_transform(train=view > 0)
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            images = load_images(ds, chunk, image_column, data_id)
            batch = []
            for row, img in zip(chunk, images):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(view_seed, "view", int(row), view))
                    batch.append(transform(img))
            x = torch.stack(batch)
            if len(batch) < self.batch_size:
                # Always a full batch: the image tower's kernels choose their algorithm by batch size,
                # so a row's features would otherwise depend on which rows were missing with it (the
                # order runs filled the cache in), not on the image alone.
                x = torch.cat([x, x[:1].expand(self.batch_size - len(batch), *x.shape[1:])])
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            encode = self.backbone.encode_image_tokens if self.tokens else self.backbone.encode_image
            out.append(F.normalize(encode(x)[: len(batch)].float(), dim=-1).cpu())
        self.computed += len(rows)
        return torch.cat(out)
