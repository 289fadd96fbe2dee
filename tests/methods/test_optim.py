"""A client's local optimizer (fedmoap/methods/optim.py): SGD over the parameter groups, resumed
from a kept state with the learning rates set afresh, the cosine schedules per training and per
round, and the kept state's CPU copy."""

from __future__ import annotations

import math

import pytest
import torch

from fedmoap.config.sections import TrainArgs
from fedmoap.methods import registry
from fedmoap.methods.optim import ParamGroup, cosine, cpu_copy, local_sgd, lr_schedule, round_cosine
from tests.worlds import tiny_federation, tiny_world

METHODS = registry()
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, the synthetic dataset split over 4 clients, every input a method can read."""
    return tiny_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS, num_views=1)


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "reset"])
def test_optimizer_state_policy(world, tmp_path, keep):
    """Under ``keep`` a client's momentum is stored and the next local training starts from it;
    under ``reset`` nothing is stored and every local training starts afresh."""
    fed = tiny_federation(world, METHODS["promptfl"](n_ctx=4), tmp_path, rounds=2, keep=keep)
    module = fed.module
    fed.run_round(1, progress=False)
    stored = fed.store.get(0)["optim"]
    if not keep:
        assert stored is None
        return
    momentum = stored["state"][0]["momentum_buffer"]
    assert momentum.abs().sum() > 0
    module.load_client(0, fed.store.get(0))
    optimizer = module.configure_optimizers()["optimizer"]
    assert torch.equal(optimizer.state[module.ctx]["momentum_buffer"], momentum)
    assert optimizer.param_groups[0]["lr"] == module.run.train.lr  # the schedule restarts every round


def test_cosine_schedule_is_torchs_cosine_annealing():
    """Per local training: the lr after each epoch is CosineAnnealingLR's (T_max = the epochs,
    eta_min 0); a group that does not anneal keeps its lr."""
    epochs = 5
    annealed, kept = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    groups = [ParamGroup([annealed], 0.3), ParamGroup([kept], 0.2, anneal=False)]
    ours = local_sgd(groups, TrainArgs(), None)
    schedule = lr_schedule(ours, groups, epochs, None)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.3)
    ref_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=epochs)
    for _ in range(epochs):
        ours.step(), ref.step()
        schedule.step(), ref_schedule.step()
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], abs=1e-12)
        assert ours.param_groups[1]["lr"] == 0.2
    assert ours.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_round_schedule_is_a_constant_factor_per_round():
    assert round_cosine(TrainArgs(), 3) is None  # local: the per-training cosine
    rounds = TrainArgs(lr_schedule="rounds", lr_rounds=4)
    assert round_cosine(rounds, None) is None
    factors = [round_cosine(rounds, t) for t in range(1, 7)]
    expected = [0.5 * (1 + math.cos(math.pi * (t - 1) / 4)) for t in (1, 2, 3, 4, 4, 4)]  # past R: the last
    assert factors == pytest.approx(expected) and factors[0] == 1.0
    assert [cosine(e, 3, 0.25) for e in range(3)] == [0.25] * 3
    assert cosine(0, 3) == 1.0 and cosine(3, 3) == pytest.approx(0.0)


def test_a_kept_state_resumes_momentum_with_the_learning_rates_set_afresh():
    p = torch.nn.Parameter(torch.ones(3))
    train = TrainArgs(lr=0.1, momentum=0.9, weight_decay=0.0)
    first = local_sgd([ParamGroup([p], 0.1)], train, None)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    first.step()
    first.param_groups[0]["lr"] = 0.001  # where the last schedule left it
    state = cpu_copy(first.state_dict())
    resumed = local_sgd([ParamGroup([p], 0.05)], train, state)
    assert resumed.param_groups[0]["lr"] == 0.05 and resumed.param_groups[0]["momentum"] == 0.9
    assert torch.equal(resumed.state[p]["momentum_buffer"], torch.tensor([1.0, 2.0, 3.0]))
    before = p.detach().clone()
    resumed.step()  # buffer 0.9 b + g = 1.9 g: momentum carried over
    torch.testing.assert_close(p.detach(), before - 0.05 * 1.9 * p.grad)


def test_cpu_copy_is_deep_and_keeps_container_types():
    t = torch.ones(2)
    copied = cpu_copy({"a": [t, (t, 3)], "b": "x"})
    t.add_(1)
    assert torch.equal(copied["a"][0], torch.ones(2)) and isinstance(copied["a"][1], tuple)
    assert copied["a"][1][1] == 3 and copied["b"] == "x"
