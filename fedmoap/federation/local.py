"""One client's local training and evaluation, on the batches its method asked for.

Backward passes and optimizer steps go through Lightning Fabric, so mixed precision gets what it
needs (``16-mixed``: loss scaling, with a scaler state kept per client).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from lightning import Fabric

from fedmoap.inputs.federated_data import FederatedData
from fedmoap.methods.base import ClientModule, Payload

__all__ = ["Batches", "train_locally", "LocalTraining", "evaluate"]

Batches = Callable[[int], Iterable[dict[str, torch.Tensor]]]
"""epoch -> the batches of that epoch (dicts of the method's inputs and ``label``)."""


def train_locally(
    module: ClientModule,
    batches: Batches,
    epochs: int,
    fabric: Fabric,
    scaler_state: dict | None = None,
    t: int | None = None,
    federated: bool = True,
) -> dict | None:
    """``epochs`` epochs of the module's optimizer on one client in round ``t``; the schedule
    steps per epoch. ``federated``: a round's local training, whose lr follows
    ``train.lr_schedule``; False: evaluation-time training (fine-tuning, a newcomer's adaptation),
    a training of its own whose lr anneals over its own epochs from ``train.lr`` whatever the round.

    Returns the loss scaler's state under ``16-mixed`` (the client keeps it), else None.
    """
    module.planned_epochs, module.planned_round, module.planned_by_round = epochs, t, federated
    built = module.configure_optimizers()
    if built is None:
        return None
    optimizer = fabric.setup_optimizers(built["optimizer"])
    scheduler = built["lr_scheduler"]["scheduler"]
    scaler = getattr(fabric.strategy.precision, "scaler", None)
    if scaler is not None:
        scaler.load_state_dict(scaler_state) if scaler_state else _reset_scaler(scaler)
    module.train()
    for epoch in range(epochs):
        for step, batch in enumerate(batches(epoch)):
            module.on_train_batch_start(batch, step)  # Lightning's hooks (no-ops unless a method
            with fabric.autocast():  # defines them, e.g. DP-FPL's factorisation)
                loss = module.training_step(batch, step)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            module.on_after_backward()
            optimizer.step()
        scheduler.step()
    module.eval()
    return scaler.state_dict() if scaler is not None else None


class LocalTraining:
    """How a participant trains in a round and what of it leaves the client: plain local training
    on its augmented batches, the upload as it is. Differential privacy wraps it
    (:class:`fedmoap.federation.privacy.PrivateTraining`: DP-SGD in place of the training, or the upload clipped and
    noised), so the round loop never asks which one runs."""

    def __init__(self, data: FederatedData, fabric: Fabric, batch_size: int) -> None:
        self.data, self.fabric, self.batch_size = data, fabric, batch_size

    def train(self, module: ClientModule, cid: int, t: int, epochs: int) -> None:
        """``epochs`` epochs of client ``cid`` (loaded into ``module``) in round ``t``; the loss
        scaler's state (``16-mixed``) goes in and out with the client's state."""
        batches = self.data.train_batches(cid, t, self.batch_size)
        module.scaler_state = train_locally(module, batches, epochs, self.fabric, module.scaler_state, t=t)

    def release(self, t: int, cid: int, upload: Payload, payload: Payload) -> Payload:
        """What the server receives of client ``cid``'s ``upload`` (``payload``: what it downloaded)."""
        return upload

    def after_round(self, t: int, participants: list[int], gather: Callable | None = None) -> dict:
        """Round ``t``'s entries for ``results.json`` (none without DP)."""
        return {}


def _reset_scaler(scaler: torch.amp.GradScaler) -> None:
    fresh = torch.amp.GradScaler(scaler._device)
    scaler.load_state_dict(fresh.state_dict())


@torch.no_grad()
def evaluate(module: ClientModule, batches: Iterable[dict[str, torch.Tensor]], fabric: Fabric) -> tuple[int, int]:
    """(correct, total) top-1 predictions of the module's current client (after
    :meth:`ClientModule.begin_eval`). The label is taken out of each batch before the module
    sees it."""
    module.eval()
    correct = total = 0
    with fabric.autocast():
        for batch in batches:
            label = batch.pop("label")
            correct += int((module.predict(batch).argmax(-1) == label).sum())
            total += len(label)
    return correct, total
