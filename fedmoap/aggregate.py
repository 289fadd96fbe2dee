"""Aggregation maths the servers share: the weighted mean of uploads and their size on the wire.

A leaf below the methods: plain tensors in, plain tensors out, no knowledge of a method.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

__all__ = ["payload_bytes", "weighted_mean"]


def payload_bytes(payload: Mapping[str, Tensor]) -> int:
    """Bytes a payload takes on the wire (raw tensor data)."""
    return sum(t.numel() * t.element_size() for t in payload.values())


def weighted_mean(
    uploads: Mapping[int, Mapping[str, Tensor]], weights: Mapping[int, float], like: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The weighted mean of every uploaded tensor (any key, any shape), accumulated in float64.

    Every participant must upload the same keys with the same shapes. The result has the dtype
    of ``like[key]`` where given, else of the first upload.
    """
    ids = sorted(uploads)
    if not ids:
        raise ValueError("no uploads to average")
    keys = set(uploads[ids[0]])
    for i in ids:
        if set(uploads[i]) != keys:
            raise ValueError(f"client {i} uploaded {sorted(uploads[i])}, client {ids[0]} {sorted(keys)}")
    w = torch.tensor([float(weights[i]) for i in ids], dtype=torch.float64)
    w = w / w.sum()
    out = {}
    for key in sorted(keys):
        stacked = torch.stack([uploads[i][key].double() for i in ids])
        mean = (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).sum(0)
        out[key] = mean.to((like or {}).get(key, uploads[ids[0]][key]).dtype)
    return out
