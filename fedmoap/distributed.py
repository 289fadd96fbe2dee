"""The few collectives the round loop needs, over Lightning Fabric's process group.

Clients are trained independently on each rank (never wrapped in DDP: there is no gradient to
synchronise between different clients); ranks exchange Python objects of CPU tensors at fixed
points of a round, so every rank calls every collective in the same order.
"""
from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


class Comm:
    """Rank, world size and object collectives; a single process needs no process group."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size

    @classmethod
    def from_fabric(cls, fabric: Any) -> "Comm":
        return cls(fabric.global_rank, fabric.world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share of ``items``: a balanced round-robin over the sorted list. Which rank
        handles a client does not change its result (its random streams depend on its id only)."""
        return list(items)[self.rank::self.world_size]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_dicts(self, part: dict) -> dict:
        """The union of every rank's dict (keys are disjoint by construction)."""
        merged: dict = {}
        for d in self.gather(part):
            merged.update(d)
        return merged

    def broadcast(self, obj: T, src: int = 0) -> T:
        if self.world_size == 1:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on some rank."""
        return any(self.gather(bool(flag)))

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
