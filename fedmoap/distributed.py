"""The few collectives the round loop needs, over Lightning Fabric's process group.

Clients are trained independently on each rank (never wrapped in DDP: there is no gradient to
synchronise between different clients); ranks exchange Python objects of CPU tensors at fixed
points of a round, so every rank calls every collective in the same order.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch.distributed as dist

__all__ = ["T", "peers_problem", "Comm"]

T = TypeVar("T")


def peers_problem(num_nodes: int) -> str | None:
    """Why ``num_nodes`` nodes cannot be reached from here (None if they can): with more than one
    node, Lightning Fabric waits for the other nodes' processes, and only a launcher that starts
    them says where they are, which Fabric detects (TorchElastic, SLURM's srun, LSF, MPI) or reads
    from MASTER_ADDR and NODE_RANK (its plain environment). Without one a run would wait forever."""
    if num_nodes <= 1:
        return None
    from lightning.fabric.plugins.environments import LSFEnvironment, MPIEnvironment, TorchElasticEnvironment
    from lightning.fabric.plugins.environments.slurm import _is_srun_used

    slurm_nodes = os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES"))
    if _is_srun_used() and slurm_nodes and slurm_nodes.isdigit() and int(slurm_nodes) < num_nodes:
        return f"fabric.num_nodes {num_nodes}: this SLURM job has {slurm_nodes} node(s)"
    if (
        _is_srun_used()
        or TorchElasticEnvironment.detect()
        or LSFEnvironment.detect()
        or MPIEnvironment.detect()
        or {"MASTER_ADDR", "NODE_RANK"} <= os.environ.keys()
    ):
        return None
    return (
        f"fabric.num_nodes {num_nodes} needs a launcher that starts the other nodes (srun under "
        "SLURM, torchrun, jsrun, mpirun, or MASTER_ADDR and NODE_RANK set on every node); "
        "none was found, so the run would wait forever: use fabric.num_nodes 1"
    )


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
        return list(items)[self.rank :: self.world_size]

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
