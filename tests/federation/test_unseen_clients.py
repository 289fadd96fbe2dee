"""Never-trained (held-out) clients of ``eval.modes`` unseen_clients: each method's global
component without adaptation, its first-time-participant procedure with adaptation, and nothing
of either reaching the store or the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmoap.config.sections import EvalArgs
from fedmoap.federation.evaluation import ModeEvaluator
from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from fedmoap.methods.pfedmoap import nearest_experts
from tests.worlds import tiny_federation, tiny_world

N, HELD = 5, 4
METHODS = registry()
KNOBS = {
    "pepfedpt": dict(shared_tokens=2, class_tokens=1),
    "pfedmoap": dict(n_ctx=4, d_gating=32, heads=4, num_experts=2),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("cache"), N, alpha=0.3)


def trained(
    world, tmp_path: Path, name: str, adaptation_epochs: int, rounds: int = 2, **knobs
) -> tuple[Federation, ModeEvaluator]:
    """``rounds`` rounds of ``name`` over clients 0-3 (client 4 held out), full participation."""
    backbone, classnames, data = world
    method = METHODS[name](**{**KNOBS.get(name, dict(n_ctx=4)), **knobs})
    modes = ModeEvaluator(EvalArgs(modes=["unseen_clients"], adaptation_epochs=adaptation_epochs), None, [HELD], 1)
    fed = tiny_federation(world, method, tmp_path / "clients", rounds=rounds, held_out=[HELD])
    for t in range(1, rounds + 1):
        fed.run_round(t, progress=False)
    return fed, modes


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def flat(state) -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {"": state.clone()}
    return {f"{k}/{j}": v for k, sub in sorted(state.items(), key=lambda kv: str(kv[0])) for j, v in flat(sub).items()}


def test_pfedmoap_adapts_with_its_nearest_pool_experts_and_trains_its_gating(world, tmp_path):
    fed, modes = trained(world, tmp_path, "pfedmoap", adaptation_epochs=2)
    module, server = fed.module, fed.server
    before_files, before_server = files(tmp_path), flat(server.state_dict())
    # phase 1 on its own: what the held-out client would upload, were it a participant
    module.load_client(HELD, None)
    fresh_gating = {k: v.clone() for k, v in module.gating.state_dict().items()}
    module.receive(server.eval_payload(HELD))
    fed.adapt(HELD, 2, 2)
    phase1 = module.ctx.detach().clone()
    want = nearest_experts({**server.pool, HELD: phase1}, HELD, 2)
    assert len(want) == 2 and HELD not in want

    out = modes(fed, 2, {})["unseen_clients"]  # the module is left holding the adapted client
    assert module.experts is not None and len(module.experts) == 2
    assert torch.equal(module.experts, torch.stack([server.pool[j] for j in want]))
    gating = module.gating.state_dict()
    assert all(not torch.equal(gating[k], fresh_gating[k]) for k in gating)
    assert set(out["adapted"]["clients"]) == {str(HELD)}
    # nothing of it was stored, uploaded or pooled
    assert files(tmp_path) == before_files and HELD not in fed.store and HELD not in server.pool
    after = flat(server.state_dict())
    assert after.keys() == before_server.keys()
    assert all(torch.equal(after[k], before_server[k]) for k in after)
    # without adaptation: the global prompt, no experts
    modes.adaptation_epochs = 0
    modes(fed, 2, {})
    assert module.experts is None and torch.equal(module.ctx.detach(), server.global_state["prompt"])


@pytest.mark.parametrize("variant", ["heuristic", "attentive"])
def test_fedamp_never_trained_client_takes_the_mean_of_the_clients_prompts(world, tmp_path, variant):
    fed, modes = trained(world, tmp_path, "fedamp", adaptation_epochs=0, variant=variant)
    prompts = torch.stack([fed.store.get(c)["params"]["ctx"] for c in range(N) if c != HELD])
    modes(fed, 2, {})
    assert torch.allclose(fed.module.ctx.detach(), prompts.double().mean(0).float(), atol=1e-7)
    # adapting, it starts from that mean and is pulled toward it
    payload = fed.server.unseen_payload(HELD)
    assert torch.equal(payload["prompt"], fed.module.ctx.detach())
    fed.module.load_client(HELD, None)
    fed.module.receive(payload)
    assert torch.equal(fed.module.cloud, payload["prompt"]) and fed.module.prox_weight > 0


def test_pepfedpt_adapted_held_out_client_uses_its_own_label_histogram(world, tmp_path):
    fed, modes = trained(world, tmp_path, "pepfedpt", adaptation_epochs=1, rounds=1)
    labels = fed.data.train_labels(HELD)
    own = torch.bincount(labels, minlength=fed.module.num_classes).float()
    others = [torch.bincount(fed.data.train_labels(c), minlength=len(own)).float() for c in range(N) if c != HELD]
    assert all(not torch.equal(own, o) for o in others)  # the check can tell them apart
    modes(fed, 1, {})
    assert torch.equal(fed.module.prior_counts, own)
    assert torch.allclose(fed.module.prior(), own / own.sum())
    assert HELD not in fed.store


def test_fedper_never_trained_client_has_the_shared_tokens_and_the_mean_personal_tokens(world, tmp_path):
    fed, modes = trained(world, tmp_path, "fedper", adaptation_epochs=0)
    module, shared = fed.module, fed.module.shared
    ctxs = torch.stack([fed.store.get(c)["params"]["ctx"] for c in range(N) if c != HELD])
    modes(fed, 2, {})
    ctx = module.ctx.detach()
    assert torch.equal(ctx[shared], fed.server.global_state["shared"])
    assert torch.allclose(ctx[~shared], ctxs.double().mean(0).float()[~shared], atol=1e-7)


@pytest.mark.parametrize("name", ["fedotp", "fedpgp", "dpfpl"])
def test_never_trained_client_is_evaluated_with_the_global_prompt_alone(world, tmp_path, name):
    fed, modes = trained(world, tmp_path, name, adaptation_epochs=0, rounds=1)
    modes(fed, 1, {})
    m, g = fed.module, fed.server.global_state["prompt"]
    assert torch.equal(m.ctx.detach(), g)
    if name == "fedotp":
        assert torch.equal(m.local.detach(), g)
    elif name == "fedpgp":
        assert torch.equal(m.personal_prompt().detach(), g)
    else:
        assert torch.equal(m.client_ctx().detach(), g)


def test_pfedprompt_adapted_held_out_client_caches_its_own_training_features(world, tmp_path):
    fed, modes = trained(world, tmp_path, "pfedprompt", adaptation_epochs=1, rounds=1)
    modes(fed, 1, {})
    m, data = fed.module, fed.data
    own = torch.cat([b["features"] for b in data.plain_train_batches(HELD, 64)]).float()
    assert m.cache_keys is not None and len(m.cache_keys) == len(torch.unique(own, dim=0))
    counts = torch.bincount(data.train_labels(HELD), minlength=m.num_classes).float()
    assert torch.equal(m.cache_values.sum(0), counts)  # every training example once
    assert HELD not in fed.store
