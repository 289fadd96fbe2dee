"""DP-FPL, corrected (fedmoap/methods/dpfpl.py): the client prompt is the global prompt plus a
low-rank local update, whose gradient has rank at most 2r; only the global prompt is uploaded."""

from __future__ import annotations

import pytest
import torch

from fedmoap.config.sections import TrainArgs
from fedmoap.federation.dp_sgd import private_parameters
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from tests.worlds import tiny_world

METHODS = registry()
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, the synthetic dataset split over 4 clients, every input a method can read."""
    torch.manual_seed(0)
    return tiny_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS, num_views=1)


def test_dpfpl_prompt_and_low_rank_local_update(world):
    """Client prompt P_G + u v + r equals P_G + P_L; P_L's gradient is g_u v + u g_v (rank <= 2r);
    only the global prompt is uploaded."""
    backbone, classnames, data = world
    method = METHODS["dpfpl"](n_ctx=4, rank=1)
    m = method.build_client(backbone, classnames, RunContext(0, NUM_CLIENTS, TrainArgs(), True))
    m.load_client(0, None)
    batch = next(iter(data.train_batches(0, 1, 8)(0)))
    m.train()
    m.on_train_batch_start(batch, 0)
    assert torch.allclose(m.client_ctx(), m.ctx + m.local, atol=1e-6)
    m.training_step(batch, 0).backward()
    assert m.local.grad is None and m.u.grad is not None  # P_L is reached through u v only
    m.on_after_backward()
    sv = torch.linalg.svdvals(m.local.grad.double())
    assert sv[1] > 1e-3 * sv[0] and sv[2] < 1e-5 * sv[0]  # rank 2 = 2r
    assert torch.allclose(m.local.grad, m.u.grad @ m.v + m.u @ m.v.grad)
    assert set(m.upload()) == {"prompt"}
    assert list(private_parameters(m)) == ["ctx", "u", "v"]  # its dp_parameters, not P_L
    m.eval()
    assert torch.equal(m.client_ctx(), m.ctx + m.local)
