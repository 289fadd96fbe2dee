"""DP-SGD for any method (``dp.mode: record_sgd``; the accountant and the run's view are in
:mod:`fedmoap.federation.privacy`): per-example gradients of the method's own ``training_step``, clipped over
all trained parameters together, summed, noised and divided by the expected batch size, with
Poisson sampling of each step's batch. Every draw is seeded by (seed, purpose, round, client)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from fedmoap.seeding import torch_generator

if TYPE_CHECKING:
    from lightning import Fabric

    from fedmoap.inputs.federated_data import FederatedData
    from fedmoap.methods.base import ClientModule


__all__ = [
    "PER_EXAMPLE_CHUNK",
    "per_example_grads",
    "clipped_sum",
    "noisy_mean",
    "private_parameters",
    "steps_per_epoch",
    "dp_sgd",
]

PER_EXAMPLE_CHUNK = 16
"""Examples whose gradients are computed in one ``vmap`` call (bounds the memory of record_sgd)."""


def per_example_grads(
    module: ClientModule, params: dict[str, nn.Parameter], batch: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Each example's gradient of the method's ``training_step`` loss (on a batch of one) with
    respect to ``params``: name -> (B, *shape), by ``torch.func.vmap(grad(functional_call))``;
    for a method whose step ``vmap`` cannot transform (data-dependent control flow such as
    FedOTP's OT iterations, in-place updates of its own buffers), one backward pass per example
    (exact, slower)."""
    if module.pure_training_step and type(module) not in _NOT_VMAPPABLE:
        try:
            return _vmapped_grads(module, params, batch)
        except RuntimeError:
            _NOT_VMAPPABLE.add(type(module))
    return _looped_grads(module, params, batch)


_NOT_VMAPPABLE: set[type] = set()
"""Client module classes whose ``training_step`` ``torch.func`` could not transform."""


def _looped_grads(module: ClientModule, params: dict[str, nn.Parameter], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    names, tensors = list(params), list(params.values())
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for i in range(len(next(iter(batch.values())))):
        loss = module.training_step({k: v[i : i + 1] for k, v in batch.items()}, 0)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for name, p, g in zip(names, tensors, grads):
            out[name].append(torch.zeros_like(p) if g is None else g)
    return {name: torch.stack(v) for name, v in out.items()}


def _vmapped_grads(
    module: ClientModule, params: dict[str, nn.Parameter], batch: dict[str, Tensor]
) -> dict[str, Tensor]:
    from torch.func import functional_call, grad, vmap

    step = _TrainingStep(module)
    detached = {f"m.{n}": p.detach() for n, p in params.items()}

    def loss(p: dict[str, Tensor], example: dict[str, Tensor]) -> Tensor:
        return functional_call(step, p, ({k: v.unsqueeze(0) for k, v in example.items()},))

    out: dict[str, list[Tensor]] = {n: [] for n in params}
    n = len(next(iter(batch.values())))
    with warnings.catch_warnings():  # ops without a batching rule fall back to a loop: slower, exact
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        for start in range(0, n, PER_EXAMPLE_CHUNK):
            chunk = {k: v[start : start + PER_EXAMPLE_CHUNK] for k, v in batch.items()}
            g = vmap(grad(loss), in_dims=(None, 0), randomness="different")(detached, chunk)
            for name in params:
                out[name].append(g[f"m.{name}"])
    return {name: torch.cat(v) for name, v in out.items()}


class _TrainingStep(nn.Module):
    """``training_step`` as a module's forward, so ``functional_call`` can swap the parameters."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.m.training_step(batch, 0)


def clipped_sum(
    module: ClientModule, params: dict[str, nn.Parameter], batch: dict[str, Tensor], clip: float
) -> tuple[dict[str, Tensor], list[float]]:
    """The sum over the batch of each example's gradient (all of ``params`` together) clipped to
    L2 norm ``clip``; and the norms before clipping."""
    summed = {name: torch.zeros_like(p) for name, p in params.items()}
    if not len(batch["label"]):
        return summed, []
    grads = per_example_grads(module, params, batch)
    norm = torch.sqrt(sum(g.flatten(1).double().square().sum(1) for g in grads.values()))
    factor = (clip / norm.clamp_min(1e-12)).clamp(max=1.0)
    for name, g in grads.items():
        summed[name] = torch.einsum("b,b...->...", factor.to(g.dtype), g)
    return summed, norm.tolist()


def noisy_mean(
    summed: Tensor, clip: float, noise_multiplier: float, expected_batch: float, gen: torch.Generator
) -> Tensor:
    """DP-SGD's gradient: (sum of clipped gradients + N(0, (z·clip)²)) / expected batch size;
    the noise is drawn on the CPU from ``gen`` (deterministic on any device)."""
    z = torch.randn(summed.shape, generator=gen) * (noise_multiplier * clip)
    return (summed + z.to(summed.device, summed.dtype)) / expected_batch


def private_parameters(module: ClientModule) -> dict[str, nn.Parameter]:
    """What record_sgd differentiates, clips and noises
    (:meth:`~fedmoap.methods.base.ClientModule.dp_parameters`), by parameter name in the module's
    registration order."""
    ids = {id(p) for p in module.dp_parameters()}
    return {n: p for n, p in module.named_parameters() if id(p) in ids}


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def dp_sgd(
    module: ClientModule,
    data: FederatedData,
    cid: int,
    t: int,
    epochs: int,
    fabric: Fabric,
    clip: float,
    noise_multiplier: float,
    seed: int,
    batch_size: int,
) -> list[float]:
    """record_sgd's local training (in place of :func:`~fedmoap.federation.local.train_locally`): ``epochs``
    epochs of ceil(n / B) Poisson-sampled steps. Returns the per-example gradient norms before
    clipping (a diagnostic; not private)."""
    module.planned_epochs, module.planned_round, module.planned_by_round = epochs, t, True
    built = module.configure_optimizers()
    if built is None:
        return []
    optimizer = fabric.setup_optimizers(built["optimizer"])
    scheduler = built["lr_scheduler"]["scheduler"]
    params = private_parameters(module)
    n = data.train_size(cid)
    k = steps_per_epoch(n, batch_size)
    q = 1.0 / k
    whole = data.train_batches(cid, t, n)  # one batch of the client's whole set per epoch (views drawn per epoch)
    sampling = torch_generator(seed, "dp-poisson", t, cid)
    noise = torch_generator(seed, "dp-noise", t, cid)
    norms: list[float] = []
    module.train()
    for epoch in range(epochs):
        full = next(iter(whole(epoch)))
        for step in range(k):
            take = (torch.rand(n, generator=sampling) < q).to(full["label"].device)
            batch = {key: v[take] for key, v in full.items()}
            module.on_train_batch_start(batch, step)
            summed, batch_norms = clipped_sum(module, params, batch, clip)
            norms += batch_norms
            for name, p in params.items():
                p.grad = noisy_mean(summed[name], clip, noise_multiplier, q * n, noise)
            module.on_after_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for p in params.values():
                p.grad = None
        scheduler.step()
    module.eval()
    return norms
