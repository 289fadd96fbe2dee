"""Tensor dicts <-> Flower records, bit for bit.

A payload or an upload (``dict[str, Tensor]``) travels as an :class:`flwr.app.ArrayRecord` whose
arrays carry the tensor's raw bytes, its torch dtype and shape: every dtype (bfloat16 too, which
NumPy lacks) comes back identical, in the same key order. Nothing but these tensors and the
round's numbers (:class:`~flwr.app.ConfigRecord`, :class:`~flwr.app.MetricRecord`) is ever put in
a message.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

__all__ = ["STYPE", "to_record", "from_record"]

STYPE = "fedmoap.torch.raw"
"""The serialisation type of our arrays: a contiguous tensor's bytes, little-endian as in memory."""


def to_record(tensors: dict[str, Tensor]) -> ArrayRecord:
    """An ArrayRecord holding ``tensors`` (detached, on CPU), in their order."""
    record = ArrayRecord()
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        record[key] = Array(dtype=str(t.dtype).removeprefix("torch."), shape=tuple(t.shape), stype=STYPE, data=data)
    return record


def from_record(record: ArrayRecord) -> dict[str, Tensor]:
    """The tensors :func:`to_record` stored, in their order."""
    out = {}
    for key, array in record.items():
        if array.stype != STYPE:
            raise ValueError(f"array {key!r}: serialisation {array.stype!r}, not fedmoap's")
        dtype = getattr(torch, array.dtype)
        flat = (
            torch.frombuffer(bytearray(array.data), dtype=torch.uint8).view(dtype)
            if array.data
            else torch.empty(0, dtype=dtype)
        )
        out[key] = flat.reshape(tuple(array.shape)).clone()
    return out
