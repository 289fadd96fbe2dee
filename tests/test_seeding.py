"""Seeds derived from the run seed and tags (fedmoap/seeding.py): a pure function of them, the same
in another process, and independent streams for different tags."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from fedmoap.seeding import derive_seed, numpy_rng, torch_generator


def test_a_seed_is_a_pure_function_of_the_run_seed_and_tags():
    assert derive_seed(0, "a", 1) == 8342431607888760756  # pinned: a change would alter every run's numbers
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", "1")  # tags are read as text
    seeds = {derive_seed(s, *tags) for s in (0, 1) for tags in [("a", 1), ("a", 2), ("b", 1), ("a",), ()]}
    assert len(seeds) == 10
    assert all(0 <= s < 2**63 for s in seeds)


def test_the_seed_is_the_same_in_another_process():
    code = "from fedmoap.seeding import derive_seed; print(derive_seed(7, 'initial_prompt'))"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == derive_seed(7, "initial_prompt") == 1917327700638470677


def test_generators_replay_their_stream_and_differ_by_tag():
    a = torch.randn(5, generator=torch_generator(3, "x", 0))
    assert torch.equal(a, torch.randn(5, generator=torch_generator(3, "x", 0)))
    assert not torch.equal(a, torch.randn(5, generator=torch_generator(3, "x", 1)))
    assert torch_generator(3, "x").initial_seed() == derive_seed(3, "x")
    b = numpy_rng(3, "x", 0).random(5)
    assert np.array_equal(b, numpy_rng(3, "x", 0).random(5))
    assert np.array_equal(b, np.random.default_rng(derive_seed(3, "x", 0)).random(5))
