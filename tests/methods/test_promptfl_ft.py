"""PromptFL+FT (fedmoap/methods/promptfl_ft.py): the copy fine-tuned at evaluation never reaches the
store or the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from tests.worlds import pathological_world, same_state, tiny_federation

NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients split pathologically, features, tokens and pixels."""
    return pathological_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS)


def federation(world, name: str, tmp_path: Path, **knobs) -> Federation:
    """A federation of method ``name`` (small knobs, ``knobs`` over them) on ``world``."""
    small = {"n_ctx": 4, "ft_epochs": 1} if name == "promptfl_ft" else {"n_ctx": 4}
    return tiny_federation(world, registry()[name](**{**small, **knobs}), tmp_path / "clients")


def test_promptfl_ft_fine_tunes_a_copy_that_is_never_kept(world, tmp_path):
    fed = federation(world, "promptfl_ft", tmp_path, ft_epochs=2)
    fed.run_round(1, progress=False)
    stored = {c: fed.store.get(c) for c in range(NUM_CLIENTS)}
    server = {k: v.clone() for k, v in fed.server.state_dict()["global"].items()}
    accs = fed.evaluate(list(range(NUM_CLIENTS)), 1)
    assert not torch.equal(fed.module.ctx.detach(), server["prompt"])  # the copy was trained
    for c in range(NUM_CLIENTS):
        same_state(fed.store.get(c), stored[c], f"client {c}")
    same_state(fed.server.state_dict()["global"], server, "server")
    assert fed.evaluate(list(range(NUM_CLIENTS)), 1) == accs  # seeded by (seed, adapt, t, cid)
    plain = federation(world, "promptfl_ft", tmp_path / "plain", ft_epochs=0)
    plain.server.load_state_dict(fed.server.state_dict())
    ref = federation(world, "promptfl", tmp_path / "ref")
    ref.server.load_state_dict(fed.server.state_dict())
    everyone = list(range(NUM_CLIENTS))
    assert plain.evaluate(everyone, 1) == ref.evaluate(everyone, 1)  # no FT: PromptFL exactly
    final_only = federation(world, "promptfl_ft", tmp_path / "final", ft_at="final")
    assert final_only.module.eval_adaptation_epochs(1, False) == 0
    assert final_only.module.eval_adaptation_epochs(3, True) == 1
