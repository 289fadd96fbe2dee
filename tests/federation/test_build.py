"""A federation is built whole and left alone: the builder takes its collaborators (store, server,
transport, the state to start from) and nothing re-assigns them afterwards; nothing but the
builder constructs one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fedmoap.config.sections import DPArgs
from fedmoap.errors import FedmoapError
from fedmoap.federation.build import Start, StartMismatch
from fedmoap.federation.rounds import InProcess
from fedmoap.federation.store import ClientStore
from fedmoap.methods import registry
from fedmoap.run.flower.app import Downloaded
from tests.worlds import tiny_federation, tiny_world

REPO = Path(__file__).resolve().parents[2]
COLLABORATORS = ("method", "module", "server", "store", "data", "schedule", "fabric", "comm", "privacy", "training")
DP = DPArgs(mode="client_upload", clip=0.5, noise_multiplier=1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("cache"), 3)


def method():
    return registry()["pfedmoap"](n_ctx=4, num_experts=1, d_gating=16, heads=2)


def timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if "seconds" not in k}


def test_a_node_federation_holds_the_server_and_store_it_was_given(world, tmp_path):
    server, store = Downloaded(), ClientStore(tmp_path / "node" / "clients")
    fed = tiny_federation(world, method(), store, dp=DP, server=server)
    assert fed.server is server and fed.store is store and isinstance(fed.transport, InProcess)
    assert fed.privacy is not None and fed.training is fed.privacy


def test_a_fit_federation_starts_at_the_checkpoint_it_was_given_with_its_transport(world, tmp_path):
    """Built from round 1's state (server, store index, accountant, history) with its own store
    object and transport, a federation runs round 2 as the one that ran round 1 does."""
    first = tiny_federation(world, method(), tmp_path / "clients", rounds=2, dp=DP, participation=0.5)
    record = first.run_round(1, progress=False)
    start = Start(1, first.server.state_dict(), first.store.state_dict(), first.privacy.state_dict(), (record,))
    store, transport = ClientStore(tmp_path / "clients"), InProcess()
    fed = tiny_federation(world, method(), store, rounds=2, dp=DP, participation=0.5, transport=transport, start=start)
    assert fed.store is store and fed.transport is transport
    assert fed.store.state_dict() == first.store.state_dict()
    ours, theirs = fed.server.state_dict(), first.server.state_dict()
    assert all(torch.equal(ours["pool"][c], theirs["pool"][c]) for c in theirs["pool"])
    assert fed.privacy.accountant.steps == first.privacy.accountant.steps
    again = timeless(fed.run_round(2, progress=False))
    assert again == timeless(first.run_round(2, progress=False))


def test_a_start_that_does_not_fit_is_refused(world, tmp_path):
    """A server state the method's server cannot read is a StartMismatch naming the error; a store
    index naming a client state that is not on disk is the store's own error, naming the file."""
    with pytest.raises(StartMismatch, match="^KeyError: "):
        tiny_federation(world, method(), tmp_path, start=Start(1, server={}))
    with pytest.raises(FedmoapError, match=r"client state .*round_0001\.pt is missing"):
        tiny_federation(world, method(), tmp_path, start=Start(1, store={"index": {0: 1}}))
    assert Start.of(None).fresh and not Start(1, server={}).fresh


def test_a_built_federation_refuses_new_collaborators(world, tmp_path):
    fed = tiny_federation(world, method(), tmp_path, dp=DP)
    for name in (*COLLABORATORS, "modes", "transport"):
        held = getattr(fed, name)
        with pytest.raises(AttributeError, match="fixed when it is built"):
            setattr(fed, name, None)
        with pytest.raises(AttributeError):
            delattr(fed, name)
        assert getattr(fed, name) is held
    with pytest.raises(AttributeError):
        fed.server = Downloaded()


def test_only_the_builder_constructs_a_federation():
    construct = re.compile(r"\bFederation\(")
    files = [p for d in ("fedmoap", "tests", "benchmarks", "scripts") for p in (REPO / d).rglob("*.py")]
    found = [str(p.relative_to(REPO)) for p in files if p != Path(__file__) and construct.search(p.read_text())]
    assert found == ["fedmoap/federation/build.py"]
