"""Local training (fedmoap/federation/local.py, the methods' optimizer and schedule)."""

from __future__ import annotations

import math

import pytest

from fedmoap.config.sections import TrainArgs
from fedmoap.federation.local import train_locally
from fedmoap.federation.rounds import default_fabric
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from tests.worlds import tiny_world


def _lrs_seen(module, data, epochs: int) -> list[float]:
    """The learning rate of the first parameter group at the start of each epoch of a real local
    training of ``epochs`` epochs (read from the optimizer the module built)."""
    seen: list[float] = []

    def batches(epoch: int):
        seen.append(module._optimizer.param_groups[0]["lr"])
        return data.train_batches(0, 1, 8)(epoch)

    train_locally(module, batches, epochs, default_fabric())
    return seen


@pytest.mark.parametrize("epochs", [2, 7])
def test_cosine_period_is_the_length_of_the_training(tmp_path, epochs):
    """The lr anneals over the epochs this training runs (CoOp once, fine-tuning, adaptation), not
    over ``train.local_epochs``: it never restarts, never reaches 0 before the last epoch."""
    backbone, names, data = tiny_world(tmp_path, 2)
    lr = 0.01
    run = RunContext(0, 2, TrainArgs(local_epochs=3, batch_size=8, lr=lr), True)
    method = registry()["promptfl"]()
    module = method.build_client(backbone, names, run)
    module.load_client(0, None)
    module.receive(module.global_init())
    seen = _lrs_seen(module, data, epochs)
    expected = [lr * 0.5 * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert all(a > b for a, b in zip(seen, seen[1:]))  # monotone: no restart inside the training


def test_round_schedule_is_a_cosine_over_rounds_constant_within_a_round(tmp_path):
    """``train.lr_schedule: rounds``: round t trains at lr * 0.5 (1 + cos(pi (t - 1) / R)) in every
    epoch; rounds past R keep the last value."""
    backbone, names, data = tiny_world(tmp_path, 2)
    lr, period = 0.01, 4
    run = RunContext(0, 2, TrainArgs(local_epochs=3, batch_size=8, lr=lr, lr_schedule="rounds", lr_rounds=period), True)
    module = registry()["promptfl"]().build_client(backbone, names, run)
    for t in (1, 2, 4, 6):
        module.load_client(0, None)
        module.receive(module.global_init())
        seen = []

        def batches(epoch: int):
            seen.append(module._optimizer.param_groups[0]["lr"])
            return data.train_batches(0, t, 8)(epoch)

        train_locally(module, batches, 3, default_fabric(), t=t)
        expected = lr * 0.5 * (1 + math.cos(math.pi * (min(t, period) - 1) / period))
        assert seen == pytest.approx([expected] * 3, rel=1e-12), t
