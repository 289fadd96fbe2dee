"""What every client trains and is tested on: its rows, and batches of the inputs its method reads.

Three providers, gathered once per run for the rows some client uses, each only if the method
declares it (:attr:`~fedmoap.methods.base.Method.inputs`):

- ``features``: pooled frozen image features from the feature cache (the plain view and
  ``data.num_views`` augmented views per training image);
- ``tokens``: frozen per-patch token features from the same cache, with the same views (the same
  augmented images: a view's crop and flip derive from (view seed, row, view) alone);
- ``pixels``: decoded uint8 images from the pixel cache, augmented per step for training.

A batch is a dict of the method's inputs plus ``label``; every random draw comes from the
generators the caller passes, derived from (seed, round, client[, epoch]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from datasets import Dataset
from torch import Tensor

from fedmoap.backbones.base import Backbone
from fedmoap.config.sections import DataArgs
from fedmoap.data.images import BadImage
from fedmoap.data.sources import SourceData
from fedmoap.data.split import ClientSplit
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.pixels import PixelCache, augment
from fedmoap.seeding import torch_generator

__all__ = ["Inputs", "FederatedData", "gather_inputs"]


@dataclass
class Inputs:
    """One split's inputs for the union of the rows clients use (position i = i-th used row)."""

    labels: Tensor
    features: Tensor | None = None
    """(V + 1, N, D) for train (view 0 plain), (1, N, D) for test."""
    tokens: Tensor | None = None
    """(V + 1, N, T, D) for train (view 0 plain), (1, N, T, D) for test."""
    pixels: np.ndarray | None = None
    """(M, 3, S, S) uint8, memory-mapped; ``pixel_pos`` maps used positions to its rows."""
    pixel_pos: np.ndarray | None = None

    @property
    def views(self) -> int:
        """Cached views per row (plain included) that training draws from; 1 without cached
        features or tokens."""
        cached = self.features if self.features is not None else self.tokens
        return cached.shape[0] if cached is not None else 1


@dataclass
class FederatedData:
    """Each client's training and test rows, and batches of what its method reads."""

    classnames: list[str]
    train: Inputs
    test: Inputs
    train_pos: list[Tensor]
    """Per client: positions into ``train``."""
    test_pos: list[Tensor]
    seed: int = 0
    backbone: Backbone | None = field(default=None, repr=False)
    """Normalises pixel batches (the pixels provider only)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_pos: dict[str, Tensor] = field(default_factory=dict)
    """Pooled test sets of the evaluation modes (``global``, ``base``, ``novel``): positions into
    ``test``, gathered with the clients' test rows (:attr:`ClientSplit.eval_sets`)."""

    @property
    def num_clients(self) -> int:
        return len(self.train_pos)

    def train_size(self, cid: int) -> int:
        return len(self.train_pos[cid])

    def train_labels(self, cid: int) -> Tensor:
        return self.train.labels[self.train_pos[cid]]

    def train_batches(self, cid: int, t: int, batch_size: int, purpose: str = "train"):
        """epoch -> that epoch's shuffled batches of client ``cid`` in round ``t``. ``purpose``
        names the random stream (``train``; ``adapt`` for evaluation-time training)."""
        pos = self.train_pos[cid]
        n = len(pos)
        gen = torch_generator(self.seed, purpose, t, cid)
        views = self.train.views
        augment_tag = "augment" if purpose == "train" else f"{purpose}/augment"

        def epoch(e: int) -> Iterator[dict[str, Tensor]]:
            order = torch.randperm(n, generator=gen)
            view = torch.randint(views, (n,), generator=gen)
            aug = torch_generator(self.seed, augment_tag, t, cid, e) if self.train.pixels is not None else None
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield self._batch(self.train, pos[idx], view[idx], aug)

        return epoch

    def plain_train_batches(self, cid: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Client ``cid``'s training rows in order, unaugmented (view 0, plain pixels), labels
        included: what :meth:`~fedmoap.methods.base.ClientModule.statistics` reads."""
        pos = self.train_pos[cid]
        for start in range(0, len(pos), batch_size):
            rows = pos[start : start + batch_size]
            yield self._batch(self.train, rows, torch.zeros(len(rows), dtype=torch.long), None)

    def test_batches(self, cid: int, batch_size: int) -> Iterator[dict[str, Tensor]]:
        pos = self.test_pos[cid]
        for start in range(0, len(pos), batch_size):
            rows = pos[start : start + batch_size]
            yield self._batch(self.test, rows, torch.zeros(len(rows), dtype=torch.long), None)

    def own_classes(self, cid: int) -> tuple[list[str], Tensor]:
        """The classes client ``cid`` trains on, in label order: their names, and the map from
        every label to its index among them (-1 for the others)."""
        own = torch.unique(self.train_labels(cid)).cpu()
        relabel = torch.full((len(self.classnames),), -1, dtype=torch.long)
        relabel[own] = torch.arange(len(own))
        return [self.classnames[int(k)] for k in own], relabel

    def rows_batches(self, pos: Tensor, batch_size: int, relabel: Tensor | None = None) -> Iterator[dict[str, Tensor]]:
        """Test batches of the positions ``pos`` into ``test`` (an evaluation mode's test set);
        ``relabel`` maps each label to the label space of that evaluation (e.g. novel classes
        numbered from 0)."""
        for start in range(0, len(pos), batch_size):
            rows = pos[start : start + batch_size]
            batch = self._batch(self.test, rows, torch.zeros(len(rows), dtype=torch.long), None)
            if relabel is not None:
                batch["label"] = relabel.to(batch["label"].device)[batch["label"]]
            yield batch

    def _batch(self, split: Inputs, rows: Tensor, view: Tensor, aug: torch.Generator | None) -> dict[str, Tensor]:
        d = self.device
        batch = {"label": split.labels[rows].to(d)}
        if split.features is not None:
            batch["features"] = split.features[view, rows].to(d)
        if split.tokens is not None:
            batch["tokens"] = split.tokens[view, rows].to(d)
        if split.pixels is not None:
            images = torch.from_numpy(np.ascontiguousarray(split.pixels[split.pixel_pos[rows.numpy()]])).to(d)
            x = augment(images, aug) if aug is not None else images.float().div_(255)
            batch["pixels"] = self.backbone.normalize_pixels(x)
        return batch


def gather_inputs(
    inputs: frozenset[str],
    args: DataArgs,
    source: SourceData,
    split: ClientSplit,
    features: FeatureCache | None,
    tokens: FeatureCache | None,
    pixels: PixelCache | None,
    seed: int,
    *,
    backbone: Backbone | None = None,
    device: torch.device | str = "cpu",
) -> FederatedData:
    """The inputs a method reads, for every row any client uses (encoded once, then cached), its
    batches made on ``device`` (pixel batches normalised by ``backbone``). An image that cannot be
    decoded stops it with one line naming the image and ``data.source``."""
    try:
        return _gather(inputs, args, source, split, features, tokens, pixels, seed, backbone, torch.device(device))
    except BadImage as exc:
        raise BadImage(f"data.source {args.source!r}: {exc}") from None


def _gather(
    inputs: frozenset[str],
    args: DataArgs,
    source: SourceData,
    split: ClientSplit,
    features: FeatureCache | None,
    tokens: FeatureCache | None,
    pixels: PixelCache | None,
    seed: int,
    backbone: Backbone | None,
    device: torch.device,
) -> FederatedData:
    train_used, train_pos = _union(split.train)
    pools = split.eval_sets  # the evaluation modes' pooled test sets (usually none)
    test_used, test_pos = _union(split.test + list(pools.values()))
    test_pos, pool_pos = test_pos[: split.num_clients], dict(zip(pools, test_pos[split.num_clients :]))
    train = Inputs(torch.from_numpy(source.train_labels[train_used]))
    test = Inputs(torch.from_numpy(source.test_labels[test_used]))
    column = args.image_column
    for name, cache in (("features", features), ("tokens", tokens)):
        if name in inputs:
            setattr(
                train,
                name,
                _views(cache, source.train, source.train_id, train_used, column, args.num_views, args.view_seed),
            )
            setattr(test, name, cache.get(source.test, source.test_id, test_used, column, 0)[None])
    if "pixels" in inputs:
        for part, ds, data_id, used in (
            (train, source.train, source.train_id, train_used),
            (test, source.test, source.test_id, test_used),
        ):
            rows, part.pixels = pixels.get(ds, data_id, used, column)
            part.pixel_pos = np.searchsorted(rows, used)
    return FederatedData(
        source.classnames, train, test, train_pos, test_pos, seed, backbone=backbone, device=device, eval_pos=pool_pos
    )


def _views(
    cache: FeatureCache, ds: Dataset, data_id: str, used: np.ndarray, column: str, num_views: int, view_seed: int
) -> Tensor:
    """(num_views + 1, N, ...) cached features of rows ``used``, view 0 plain; filled view by
    view so that peak memory is the result plus one view (token features are large)."""
    first = cache.get(ds, data_id, used, column, 0, view_seed)
    out = first.new_empty((num_views + 1, *first.shape))
    out[0] = first
    del first
    for v in range(1, num_views + 1):
        out[v] = cache.get(ds, data_id, used, column, v, view_seed)
    return out


def _union(per_client: list[np.ndarray]) -> tuple[np.ndarray, list[Tensor]]:
    used = np.unique(np.concatenate(per_client)) if per_client else np.zeros(0, np.int64)
    return used, [torch.from_numpy(np.searchsorted(used, idx)) for idx in per_client]
