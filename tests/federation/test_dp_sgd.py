"""Record-level DP-SGD's mechanism (fedmoap/federation/dp_sgd.py): the noise has the stated scale,
per-example clipping bounds one example's influence, and the clipped gradients are the true ones."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedmoap.config.sections import TrainArgs
from fedmoap.federation.dp_sgd import clipped_sum, noisy_mean, private_parameters
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from fedmoap.seeding import torch_generator
from tests.worlds import tiny_world

METHODS = registry()
SMALL = {"n_ctx": 4, "d_gating": 32, "heads": 4, "num_experts": 2}
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, the synthetic dataset split over 4 clients, every input a method can read."""
    torch.manual_seed(0)
    return tiny_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS, num_views=1)


def test_record_noise_has_the_stated_scale():
    z, c, expected = 1.3, 0.7, 12.5
    g = noisy_mean(torch.zeros(100_000), c, z, expected, torch_generator(0, "x"))
    assert float(g.double().std()) == pytest.approx(z * c / expected, rel=0.02)


def test_per_example_clipping_bounds_one_examples_influence(world):
    """Replacing one example changes the clipped sum by at most 2C, removing it by at most C
    (here every example's gradient is far above C)."""
    backbone, classnames, data = world
    cls = METHODS["pfedmoap"]
    method = cls(**{k: v for k, v in SMALL.items() if k in {f.name for f in dataclasses.fields(cls)}})
    module = method.build_client(backbone, classnames, RunContext(0, NUM_CLIENTS, TrainArgs(), True))
    module.load_client(0, None)
    module.set_experts(torch.randn(2, *module.ctx.shape, generator=torch_generator(0, "e")) * 0.02)
    params = private_parameters(module)
    assert {"ctx", "gating.q_proj.weight"} <= set(params)  # gating included
    batch = next(iter(data.train_batches(0, 1, 8)(0)))
    other = next(iter(data.train_batches(1, 1, 8)(0)))
    c = 1e-3
    summed, norms = clipped_sum(module, params, batch, c)
    assert min(norms) > c
    swapped = {k: torch.cat([other[k][:1], v[1:]]) for k, v in batch.items()}
    removed = {k: v[1:] for k, v in batch.items()}
    dist = lambda a, b: math.sqrt(sum(float((a[k] - b[k]).double().square().sum()) for k in a))  # noqa: E731
    assert dist(summed, clipped_sum(module, params, swapped, c)[0]) <= 2 * c * (1 + 1e-4)
    assert dist(summed, clipped_sum(module, params, removed, c)[0]) <= c * (1 + 1e-4)
    # and the clipped per-example gradients are the true ones, scaled
    one = {k: v[:1] for k, v in batch.items()}
    module.zero_grad()
    module.training_step(one, 0).backward()
    g1, n1 = clipped_sum(module, params, one, 1e9)
    for name, p in params.items():
        assert torch.allclose(g1[name], p.grad, atol=1e-6, rtol=1e-4), name
