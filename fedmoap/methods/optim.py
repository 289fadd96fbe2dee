"""The optimizer a client module builds for local training (what
:meth:`~fedmoap.methods.base.ClientModule.configure_optimizers` returns) and the copy of its state
a client keeps.

SGD over the module's parameter groups (``train.momentum``, ``train.weight_decay``), resumed from
the client's kept state where there is one, with a LambdaLR schedule stepped once per local epoch:
each group that anneals follows ``0.5 (1 + cos(pi e / E))`` over the E epochs of this training (or,
under ``train.lr_schedule: rounds``, the constant factor of the training's round), the others keep
their learning rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from fedmoap.config.sections import TrainArgs


__all__ = ["ParamGroup", "local_sgd", "cosine", "round_cosine", "lr_schedule", "cpu_copy"]


@dataclass
class ParamGroup:
    """Trainable parameters with their learning rate and schedule."""

    params: list[nn.Parameter]
    lr: float
    anneal: bool = True
    """Cosine-anneal the lr over the epochs of each local training (restarted every time a client
    trains; the period is the length of that training); False keeps it constant."""


def local_sgd(groups: Sequence[ParamGroup], train: TrainArgs, state: dict | None) -> torch.optim.SGD:
    """SGD over ``groups``, loaded from ``state`` (a kept optimizer state) where given; the
    groups' learning rates are then set afresh, as the schedule restarts with every training."""
    optimizer = torch.optim.SGD(
        [{"params": g.params, "lr": g.lr} for g in groups],
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
    )
    if state is not None:
        optimizer.load_state_dict(state)
        for group, g in zip(optimizer.param_groups, groups):
            group["lr"] = g.lr
            group.pop("initial_lr", None)
    return optimizer


def cosine(epoch: int, epochs: int, by_round: float | None = None) -> float:
    """The lr factor of local epoch ``epoch`` of ``epochs``: the cosine annealed to 0, or the
    round's constant ``by_round`` where given."""
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if by_round is None else by_round


def round_cosine(train: TrainArgs, t: int | None) -> float | None:
    """``train.lr_schedule: rounds``: the factor of round ``t``, ``0.5 (1 + cos(pi (t - 1) / R))``
    over ``train.lr_rounds`` = R rounds (rounds past R keep the last value); None for the
    per-training cosine (``local``) or where no round is planned."""
    if train.lr_schedule != "rounds" or t is None:
        return None
    r = max(1, train.lr_rounds or 1)
    return 0.5 * (1 + math.cos(math.pi * (min(t, r) - 1) / r))


def lr_schedule(
    optimizer: torch.optim.Optimizer, groups: Sequence[ParamGroup], epochs: int, by_round: float | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """One factor per group, stepped once per local epoch: :func:`cosine` where the group anneals,
    1 where it does not."""

    def annealed(epoch: int) -> float:
        return cosine(epoch, epochs, by_round)

    def constant(epoch: int) -> float:
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [annealed if g.anneal else constant for g in groups])


def cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor on the CPU (optimizer states alias live buffers)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj
