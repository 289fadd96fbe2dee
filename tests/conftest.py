"""Fixtures shared by the method tests (a test module may define its own ``world``)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.worlds import tiny_world

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the machine's cores: more OpenMP threads than cores stall each other. The
    # environment variable reaches the CLI subprocesses that tests start.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny ViT and the synthetic dataset over 2 clients, every input (built once)."""
    return tiny_world(tmp_path_factory.mktemp("tiny2"), 2)
