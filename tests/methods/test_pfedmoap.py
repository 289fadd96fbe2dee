"""pFedMoAP's server (pool, KNN, FedAvg) and client (first-time path, MoE logits, privacy)."""

from pathlib import Path

import pytest
import torch

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import TrainArgs
from fedmoap.methods.base import RunContext, payload_bytes
from fedmoap.methods.pfedmoap import PFedMoAP, PFedMoAPClient, PFedMoAPServer, nearest_experts
from fedmoap.methods.prompts import initial_prompt

CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def backbone():
    return OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)


RUN = RunContext(seed=0, num_clients=4, train=TrainArgs(), keep_optimizer_state=True)


def make_cfg(**knobs) -> PFedMoAP:
    return PFedMoAP(n_ctx=4, d_gating=32, heads=4, **knobs)


def server_for(method: PFedMoAP, init) -> PFedMoAPServer:
    return PFedMoAPServer(method, {"prompt": init}, RUN)


def client_for(backbone, method: PFedMoAP) -> PFedMoAPClient:
    return PFedMoAPClient(method, backbone, CLASSES, RUN)


def test_knn_picks_nearest_client_ids_not_positions():
    pool = {
        7: torch.zeros(2, 3),
        3: torch.full((2, 3), 5.0),
        11: torch.full((2, 3), 1.0),
        20: torch.full((2, 3), 2.0),
        4: torch.full((2, 3), -1.5),
    }
    assert nearest_experts(pool, 7, 3) == [11, 4, 20]
    assert nearest_experts(pool, 7, 10) == [11, 4, 20, 3]
    assert nearest_experts(pool, 7, 0) == []
    assert nearest_experts({7: torch.zeros(1)}, 7, 3) == []


def test_knn_ties_go_to_smaller_id():
    pool = {0: torch.zeros(2), 5: torch.ones(2), 2: -torch.ones(2)}
    assert nearest_experts(pool, 0, 1) == [2]


def test_server_pool_first_timers_and_fedavg():
    cfg = make_cfg(num_experts=2)
    server = server_for(cfg, torch.zeros(4, 8))
    assert "experts" not in server.payload(0, 1)  # first time: no pool entry
    prompts = {c: torch.full((4, 8), float(c)) for c in range(4)}
    server.aggregate(1, {c: {"prompt": prompts[c]} for c in (0, 1, 3)}, {0: 10, 1: 30, 3: 60})
    torch.testing.assert_close(server.global_state["prompt"], torch.full((4, 8), (0 * 10 + 1 * 30 + 3 * 60) / 100))
    assert set(server.pool) == {0, 1, 3}
    payload = server.payload(1, 1)
    torch.testing.assert_close(payload["experts"], torch.stack([prompts[0], prompts[3]]))
    assert "experts" not in server.payload(2, 1)  # never participated
    server.aggregate(1, {2: {"prompt": prompts[2]}}, {2: 5})  # overwrites, then nearest changes
    torch.testing.assert_close(server.payload(1, 1)["experts"], torch.stack([prompts[0], prompts[2]]))
    assert payload_bytes(payload) == 3 * 4 * 8 * 4


def test_per_client_number_of_experts():
    server = server_for(make_cfg(num_experts=3, experts_per_client={0: 1}), torch.zeros(2, 2))
    server.aggregate(1, {c: {"prompt": torch.full((2, 2), float(c))} for c in range(5)}, dict.fromkeys(range(5), 1))
    assert server.payload(0, 1)["experts"].shape[0] == 1
    assert server.payload(1, 1)["experts"].shape[0] == 3


def test_server_state_roundtrip():
    server = server_for(make_cfg(), torch.zeros(2, 2))
    server.aggregate(1, {1: {"prompt": torch.ones(2, 2)}}, {1: 1})
    other = server_for(make_cfg(), torch.zeros(2, 2))
    other.load_state_dict(server.state_dict())
    assert set(other.pool) == {1}
    torch.testing.assert_close(other.global_state["prompt"], server.global_state["prompt"])


def test_first_time_client_is_plain_coop_and_returning_client_mixes(backbone):
    cfg = make_cfg(num_experts=2, lam=0.5)
    client = client_for(backbone, cfg)
    client.load_client(0, None)
    g = initial_prompt(backbone, cfg, 0)
    client.receive({"prompt": g})
    image = torch.nn.functional.normalize(torch.randn(3, backbone.embed_dim), dim=-1)
    local = backbone.logit_scale * image @ client.text_features().t()
    torch.testing.assert_close(client({"features": image}), local)  # no experts: CoOp logits
    experts = torch.randn(2, 4, backbone.ctx_width) * 0.02
    client.receive({"prompt": g, "experts": experts})
    assert client.expert_text.shape == (2, len(CLASSES), backbone.embed_dim)
    mixed = client({"features": image})
    assert mixed.shape == (3, len(CLASSES)) and not torch.allclose(mixed, local)
    assert set(client.upload()) == {"prompt"}  # the gating never leaves the client


def test_gating_gets_gradient_only_with_experts(backbone):
    cfg = make_cfg(num_experts=2)
    client = client_for(backbone, cfg)
    client.load_client(0, None)
    client.receive({"prompt": initial_prompt(backbone, cfg, 0)})
    image = torch.nn.functional.normalize(torch.randn(3, backbone.embed_dim), dim=-1)
    client.training_step({"features": image, "label": torch.tensor([0, 1, 2])}).backward()
    assert client.gating.q_proj.weight.grad is None and client.ctx.grad is not None
    client.receive({"prompt": initial_prompt(backbone, cfg, 0), "experts": torch.randn(2, 4, backbone.ctx_width)})
    client.zero_grad()
    client.training_step({"features": image, "label": torch.tensor([0, 1, 2])}).backward()
    assert client.gating.q_proj.weight.grad.abs().sum() > 0


def test_client_state_is_restored_exactly_and_gating_init_depends_on_client(backbone):
    cfg = make_cfg(num_experts=2)
    client = client_for(backbone, cfg)
    client.load_client(0, None)
    client.receive({"prompt": torch.randn(4, backbone.ctx_width), "experts": torch.randn(1, 4, backbone.ctx_width)})
    saved = client.client_state()
    image = torch.nn.functional.normalize(torch.randn(3, backbone.embed_dim), dim=-1)
    before = client({"features": image})
    client.load_client(1, None)
    assert not torch.equal(client.gating.q_proj.weight, saved["params"]["gating.q_proj.weight"])
    client.load_client(0, saved)
    client.prepare_eval({"prompt": torch.zeros(4, backbone.ctx_width)})
    client.begin_eval()
    torch.testing.assert_close(client({"features": image}), before)
    client.load_client(0, None)  # fresh state is a pure function of (seed, id)
    torch.testing.assert_close(client.gating.q_proj.weight, saved["params"]["gating.q_proj.weight"])


def test_lambda_zero_uses_moe_only(backbone):
    cfg = make_cfg(num_experts=1, lam=0.0)
    client = client_for(backbone, cfg)
    client.load_client(0, None)
    client.receive({"prompt": initial_prompt(backbone, cfg, 0), "experts": torch.randn(1, 4, backbone.ctx_width)})
    image = torch.nn.functional.normalize(torch.randn(3, backbone.embed_dim), dim=-1)
    local_t, expert_t = client.text_features(), client.expert_text
    moe = client.gating(image, torch.cat([local_t[None], expert_t]))
    q = torch.nn.functional.normalize(client.gating.reduce(image), dim=-1)
    expected = backbone.logit_scale * torch.einsum("bd,bcd->bc", q, torch.nn.functional.normalize(moe, dim=-1))
    torch.testing.assert_close(client({"features": image}), expected)


@pytest.mark.parametrize("local_init", ["global", "own"])
def test_local_init_where_a_returning_client_starts(backbone, local_init):
    """``global`` (the paper): every round starts from the global prompt; ``own`` (ablation): a
    returning client continues its own prompt. A first-time participant starts from the global
    prompt either way."""
    cfg = make_cfg(num_experts=1, local_init=local_init)
    client = client_for(backbone, cfg)
    client.load_client(0, None)
    g = torch.randn(4, backbone.ctx_width)
    client.receive({"prompt": g})  # first time: no experts
    assert torch.equal(client.ctx.detach(), g)
    own = torch.randn(4, backbone.ctx_width)
    client.ctx.data.copy_(own)
    experts = torch.randn(1, 4, backbone.ctx_width)
    client.receive({"prompt": g, "experts": experts})  # returning
    assert torch.equal(client.ctx.detach(), g if local_init == "global" else own)
    assert torch.equal(client.experts, experts)


def reference_nearest(pool, cid, k):
    """The rule as first written: every other entry's float64 L2 distance, sorted by (distance, id)."""
    others = sorted(j for j in pool if j != cid)
    if not others or k <= 0:
        return []
    own = pool[cid].flatten().double()
    dist = [float((pool[j].flatten().double() - own).norm()) for j in others]
    return [others[i] for i in sorted(range(len(others)), key=lambda i: (dist[i], others[i]))[:k]]


@pytest.mark.parametrize("n", [2, 7, 300])
def test_the_vectorised_search_picks_exactly_the_rules_experts(n):
    """Random prompts with many exact ties (entries drawn from a few values), every client, K from
    0 to past the pool, with and without a kept pool matrix: the same ids in the same order."""
    from fedmoap.methods.pfedmoap import pool_matrix

    gen = torch.Generator().manual_seed(n)
    values = torch.randn(5, 4, 8, generator=gen)
    pool = {
        int(c): values[int(torch.randint(5, (), generator=gen))].clone()
        for c in torch.randperm(3 * n, generator=gen)[:n]
    }
    pool[min(pool)] = torch.randn(4, 8, generator=gen)
    matrix = pool_matrix(pool)
    for cid in pool:
        for k in (0, 1, 3, n - 1, n + 2):
            want = reference_nearest(pool, cid, k)
            assert nearest_experts(pool, cid, k) == want == nearest_experts(pool, cid, k, matrix), (cid, k)


@pytest.mark.parametrize("n, spread, chunk", [(2, 1, 4096), (7, 3, 2), (300, 3, 64), (300, 1, 4096), (300, 1, 7)])
def test_the_pool_matrix_search_picks_exactly_the_rules_experts(n, spread, chunk, monkeypatch):
    """The preallocated pool (rows indexed by client id, dense 0..n-1 or sparse ids, searched a
    chunk of rows at a time, one client or a batch of them) against the rule and the dict search:
    the same ids in the same order for every client and K, ties included; a query that is not in
    the pool (a held-out client's prompt) too."""
    import fedmoap.methods.pfedmoap as M

    monkeypatch.setattr(M, "POOL_CHUNK", chunk)
    gen = torch.Generator().manual_seed(n + spread)
    values = torch.randn(5, 4, 8, generator=gen)
    ids = torch.randperm(spread * n, generator=gen)[:n].tolist()
    pool = {int(c): values[int(torch.randint(5, (), generator=gen))].clone() for c in ids}
    pool[min(pool)] = torch.randn(4, 8, generator=gen)
    kept = M.PromptPool(n // 2)  # grows past its capacity
    for c in ids:
        kept[c] = pool[c]
    assert len(kept) == n and list(kept) == sorted(pool) and all(torch.equal(kept[c], pool[c]) for c in pool)
    for cid in pool:
        for k in (0, 1, 3, n - 1, n + 2):
            want = reference_nearest(pool, cid, k)
            assert kept.nearest(pool[cid], k, cid) == want == nearest_experts(kept, cid, k), (cid, k)
            assert kept.nearest_many([cid], lambda c, k=k: k) == {cid: want}
            assert nearest_experts(pool, cid, k) == want
    k_of = {c: (0, 1, 3, n - 1, n + 2)[c % 5] for c in pool}.__getitem__
    batched = kept.nearest_many(sorted(pool), k_of)
    assert batched == {c: reference_nearest(pool, c, k_of(c)) for c in pool}
    monkeypatch.setattr(M, "QUERY_CHUNK", 3)
    assert kept.nearest_many(ids[::-1], k_of) == batched
    outsider, query = spread * n + 1, values[2].clone()
    for k in (1, 4, n + 1):
        assert kept.nearest(query, k, outsider) == reference_nearest({**pool, outsider: query}, outsider, k)
    assert torch.equal(kept.rows(want), torch.stack([pool[j] for j in want]))


def test_the_batched_search_is_exact_where_distances_are_tiny_next_to_the_norms():
    """Prompts far from the origin and close to each other (the products' rounding is then
    largest against the distances), some duplicated: a server's round of payloads prepared
    together is the one it gives client by client."""
    gen = torch.Generator().manual_seed(5)
    prompts = 100 + 1e-4 * torch.randn(60, 2, 2, generator=gen)
    prompts[10:20] = prompts[0]
    server = server_for(make_cfg(num_experts=4), torch.zeros(2, 2))
    server.aggregate(1, {c: {"prompt": prompts[c].clone()} for c in range(60)}, dict.fromkeys(range(60), 1))
    one_by_one = {c: server.payload(c, 2)["experts"] for c in range(60)}
    server.prepare_round(2, list(range(60)))
    assert len(server._searched) == 60
    for c in range(60):
        assert torch.equal(server.payload(c, 2)["experts"], one_by_one[c]), c
        assert server._searched[c] == reference_nearest({j: prompts[j] for j in range(60)}, c, 4)


def test_the_pool_round_trips_and_loads_a_checkpoints_dict_of_tensors():
    server = server_for(make_cfg(num_experts=2), torch.zeros(2, 2))
    server.aggregate(1, {c: {"prompt": torch.full((2, 2), float(c))} for c in (3, 0, 9)}, dict.fromkeys((0, 3, 9), 1))
    state = server.state_dict()
    assert list(state["pool"]) == [0, 3, 9] and all(
        torch.equal(state["pool"][c], torch.full((2, 2), float(c))) for c in (0, 3, 9)
    )
    server.aggregate(2, {3: {"prompt": torch.full((2, 2), 7.0)}}, {3: 1})
    assert torch.equal(state["pool"][3], torch.full((2, 2), 3.0))  # a state taken is not changed by later rounds
    written = {"global": state["global"], "pool": {str(c): v.clone() for c, v in state["pool"].items()}}
    old = server_for(make_cfg(num_experts=2), torch.zeros(2, 2))
    old.load_state_dict(written)  # as a checkpoint with one tensor per client (string ids) holds it
    again = server_for(make_cfg(num_experts=2), torch.zeros(2, 2))
    again.load_state_dict(old.state_dict())
    for s in (old, again):
        assert list(s.pool) == [0, 3, 9] and s.payload(9, 2)["experts"].tolist() == [[[3.0] * 2] * 2, [[0.0] * 2] * 2]
    with pytest.raises(ValueError, match="pool entry of client 4"):
        again.pool[4] = torch.zeros(3)
    assert 4 not in again.pool and "4" not in again.pool


def test_a_negative_lambda_is_refused_and_above_one_is_an_ablation(tmp_path, capsys):
    from fedmoap.run.cli import main

    assert any("method.lam must be >= 0" in p for p in make_cfg(lam=-1.0).problems())
    assert not make_cfg(lam=2.0).problems()
    run_dir = tmp_path / "run"
    smoke = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
    assert main(["fit", "--config", smoke, "--method.lam", "-1", "--run_dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.lam" in err[0] and not run_dir.exists()
