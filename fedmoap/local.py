"""One client's local training and evaluation on cached features."""
from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from fedmoap.config import TrainArgs
from fedmoap.methods.base import ClientModule


def train_locally(module: ClientModule, features: Tensor, labels: Tensor, args: TrainArgs,
                  gen: torch.Generator, optimizer_state: dict | None,
                  autocast: AbstractContextManager | None = None) -> dict | None:
    """Run ``args.local_epochs`` epochs of SGD on one client; returns the optimiser state.

    ``features`` is (V + 1, n, D): each sample draws one of its views per epoch. Shuffling and view
    draws come from ``gen`` alone. Groups flagged ``cosine`` follow a cosine schedule over the
    local epochs (restarted every round), the others keep their learning rate.
    """
    optimizer = module.configure_optimizers()
    if optimizer is None:
        return None
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    device = module.device
    features, labels = features.to(device), labels.to(device)
    views, n = features.shape[0], features.shape[1]
    module.train()
    epochs = args.local_epochs
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if group["cosine"] else 1.0
            group["lr"] = group["base_lr"] * factor
        order = torch.randperm(n, generator=gen)
        view = torch.randint(views, (n,), generator=gen)
        for step, start in enumerate(range(0, n, args.batch_size)):
            idx = order[start:start + args.batch_size]
            batch = (features[view[idx].to(device), idx.to(device)], labels[idx.to(device)])
            with autocast or nullcontext():
                loss = module.training_step(batch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    module.eval()
    return optimizer.state_dict()


@torch.no_grad()
def evaluate(module: ClientModule, features: Tensor, labels: Tensor, batch_size: int,
             autocast: AbstractContextManager | None = None) -> float:
    """Top-1 accuracy of the module's current client on (features, labels)."""
    module.eval()
    device = module.device
    with autocast or nullcontext():
        module.on_validation_start()
        for step, start in enumerate(range(0, len(labels), batch_size)):
            batch = (features[start:start + batch_size].to(device), labels[start:start + batch_size].to(device))
            module.validation_step(batch, step)
    return float(module.acc.compute()) if len(labels) else float("nan")
