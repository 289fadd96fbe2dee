"""The method API's mechanism (fedmoap/methods/base.py): shared parameters come and go by their
declared names, a client's state loads and saves exactly, FedAvg's server keeps the weighted mean,
a method's declarations are its own. The conformance of every registered method to the API is in
test_method_api.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmoap.config.sections import TrainArgs
from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from fedmoap.methods.base import FedAvgServer, Method, RunContext
from fedmoap.methods.declarations import PROMPT_LEARNER, UNDECLARED
from fedmoap.methods.promptfl import PromptFL
from tests.worlds import tiny_federation, tiny_world

METHODS = registry()
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, the synthetic dataset split over 4 clients, every input a method can read."""
    return tiny_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS, num_views=1)


def federation(world, cls, tmp_path: Path, participation: float = 0.5, seed: int = 0) -> Federation:
    """A federation of ``cls`` with 4 context tokens on ``world``."""
    return tiny_federation(world, cls(n_ctx=4), tmp_path / "clients", participation=participation, seed=seed)


def test_declared_shared_split_receives_and_uploads_exactly_the_declared_parameter(world, tmp_path):
    """FedOTP declares ``{"prompt": "ctx"}``: the global prompt P_G comes and goes, the private
    P_L (``local``) does neither, even when a payload carries a key of that name."""
    fed = federation(world, METHODS["fedotp"], tmp_path)
    module = fed.module
    assert type(module).shared_params == {"prompt": "ctx"}
    module.load_client(1, None)
    local = module.local.detach().clone()
    gen = torch.Generator().manual_seed(7)
    prompt = torch.randn(module.ctx.shape, generator=gen, dtype=torch.float64)
    module.receive({"prompt": prompt, "local": torch.randn(module.local.shape, generator=gen)})
    assert module.ctx.dtype == torch.float32 and torch.equal(module.ctx.detach(), prompt.float())
    assert torch.equal(module.local.detach(), local), "an undeclared key was copied"
    up = module.upload()
    assert list(up) == ["prompt"] and torch.equal(up["prompt"], prompt.float())
    assert up["prompt"].device.type == "cpu" and not up["prompt"].requires_grad
    up["prompt"].zero_()  # a copy: the server may keep it while the client trains on
    assert torch.equal(module.ctx.detach(), prompt.float())
    later = torch.randn(module.ctx.shape, generator=gen)
    module.prepare_eval({"prompt": later, "local": torch.zeros_like(local)})
    assert torch.equal(module.ctx.detach(), later) and torch.equal(module.local.detach(), local)
    with pytest.raises(KeyError, match="prompt"):
        module.receive({"local": local})


def test_a_shared_submodule_goes_under_its_parameter_names(world, tmp_path):
    """CoCoOp shares ``{"prompt": "ctx", "meta_net": "meta_net"}``: its upload is the prompt,
    then every meta-network parameter as ``meta_net.<name>``, the keys of its server's start."""
    fed = federation(world, METHODS["cocoop"], tmp_path)
    module = fed.module
    module.load_client(0, None)
    names = [f"meta_net.{n}" for n, _ in module.meta_net.named_parameters()]
    assert list(module.upload()) == ["prompt", *names] == list(module.global_init())
    payload = {k: torch.full_like(v, i + 1.0) for i, (k, v) in enumerate(module.global_init().items())}
    module.receive(payload)
    for i, p in enumerate([module.ctx, *module.meta_net.parameters()]):
        assert torch.equal(p.detach(), torch.full_like(p, i + 1.0))


RUN = RunContext(0, 4, TrainArgs(), True)


def test_fedavg_server_keeps_the_size_weighted_mean_of_the_uploads():
    gen = torch.Generator().manual_seed(0)
    init = {"prompt": torch.zeros(2, 3), "other": torch.ones(4)}
    server = FedAvgServer(PromptFL(), init, RUN)
    a, b = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    server.aggregate(1, {0: {"prompt": a}, 2: {"prompt": b}}, {0: 1, 2: 3})
    torch.testing.assert_close(server.payload(1, 2)["prompt"], (a + 3 * b) / 4)
    assert torch.equal(server.eval_payload(3)["other"], init["other"])  # not uploaded: kept
    kept = server.state_dict()
    server.aggregate(2, {}, {})  # nobody trained: nothing changes
    assert server.state_dict()["global"].keys() == kept["global"].keys()
    assert all(torch.equal(server.state_dict()["global"][k], v) for k, v in kept["global"].items())
    server.payload(0, 3)["prompt"] = torch.ones(2, 3)  # a client's payload is not the server's state
    assert torch.equal(server.eval_payload(0)["prompt"], kept["global"]["prompt"])
    again = FedAvgServer(PromptFL(), init, RUN)
    again.load_state_dict(kept)
    assert torch.equal(again.payload(1, 3)["prompt"], kept["global"]["prompt"])


def test_the_default_server_holds_and_sends_nothing():
    from fedmoap.methods.base import Server

    server = Server(PromptFL(), {"prompt": torch.zeros(2)}, RUN)
    server.aggregate(1, {0: {"prompt": torch.ones(2)}}, {0: 1})
    assert server.payload(0, 2) == {} and server.eval_payload(0) == {} and server.unseen_payload(0) == {}
    assert server.state_dict() == {}


def test_a_stored_state_of_other_parameters_is_refused(world):
    module = PromptFL(n_ctx=4).build_client(world[0], world[1], RUN)
    with pytest.raises(ValueError, match="client 1: stored parameters"):
        module.load_client(1, {"params": {"not_ctx": torch.zeros(4, module.backbone.ctx_width)}})


def test_client_state_round_trips_through_load_client(world):
    module = PromptFL(n_ctx=4).build_client(world[0], world[1], RUN)
    module.load_client(0, None)
    assert module.fresh and module.client_id == 0
    with torch.no_grad():
        module.ctx.add_(1.0)
    state = module.client_state()
    assert set(state) == {"params", "extra", "optim"} and state["optim"] is None  # never optimised
    module.load_client(1, None)
    assert not torch.equal(module.ctx.detach(), state["params"]["ctx"])
    module.load_client(0, state)
    assert not module.fresh and torch.equal(module.ctx.detach(), state["params"]["ctx"])


def test_spec_names_the_class_path_and_every_knob():
    spec = PromptFL(n_ctx=3).spec()
    assert spec == {
        "class_path": "fedmoap.methods.promptfl.PromptFL",
        "init_args": {"n_ctx": 3, "ctx_init": None, "template": "{}."},
    }


def test_declarations_are_never_inherited():
    from dataclasses import dataclass

    @dataclass
    class Unstated(PromptFL):
        """A PromptFL subclass that states nothing about itself."""

    assert PromptFL().declared() == PROMPT_LEARNER
    assert Unstated().declared() is UNDECLARED


def test_a_method_that_trains_nothing_has_no_participants():
    assert PromptFL().participants([0, 2], 4, 1) == [0, 2]
    zeroshot = METHODS["zeroshot"]()
    assert zeroshot.participants([0, 2], 4, 1) == []
    assert Method().local_epochs(3, 5) == 5 and not Method().collects_statistics(0)
