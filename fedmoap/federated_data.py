"""The features and labels every client trains and is tested on, gathered once per run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedmoap.config import DataArgs
from fedmoap.data.sources import SourceData
from fedmoap.data.split import ClientSplit
from fedmoap.features import FeatureCache


@dataclass
class FederatedData:
    """Cached image features of all rows some client uses, and each client's rows.

    ``train_features`` has one slice per view: 0 is the plain view, 1..V the augmented ones.
    """

    classnames: list[str]
    train_features: Tensor
    """(V + 1, N_train_used, D)"""
    train_labels: Tensor
    test_features: Tensor
    """(N_test_used, D)"""
    test_labels: Tensor
    train_rows: list[Tensor]
    """Per client: positions into the train tensors."""
    test_rows: list[Tensor]

    @property
    def num_clients(self) -> int:
        return len(self.train_rows)

    def train_size(self, cid: int) -> int:
        return len(self.train_rows[cid])

    def client_train(self, cid: int) -> tuple[Tensor, Tensor]:
        rows = self.train_rows[cid]
        return self.train_features[:, rows], self.train_labels[rows]

    def client_test(self, cid: int) -> tuple[Tensor, Tensor]:
        rows = self.test_rows[cid]
        return self.test_features[rows], self.test_labels[rows]


def gather_features(args: DataArgs, source: SourceData, split: ClientSplit,
                    cache: FeatureCache) -> FederatedData:
    """Features of every row any client uses (encoded once, then read from the cache)."""
    train_used, train_pos = _union(split.train)
    test_used, test_pos = _union(split.test)
    views = [cache.get(source.train, source.train_id, train_used, args.image_column, v, args.view_seed)
             for v in range(args.num_views + 1)]
    test = cache.get(source.test, source.test_id, test_used, args.image_column, 0)
    return FederatedData(
        classnames=source.classnames,
        train_features=torch.stack(views),
        train_labels=torch.from_numpy(source.train_labels[train_used]),
        test_features=test,
        test_labels=torch.from_numpy(source.test_labels[test_used]),
        train_rows=train_pos, test_rows=test_pos,
    )


def _union(per_client: list[np.ndarray]) -> tuple[np.ndarray, list[Tensor]]:
    used = np.unique(np.concatenate(per_client)) if per_client else np.zeros(0, np.int64)
    return used, [torch.from_numpy(np.searchsorted(used, idx)) for idx in per_client]
