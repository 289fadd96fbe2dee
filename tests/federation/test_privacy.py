"""Differential privacy (``dp:``, fedmoap/federation/privacy.py): the accountant against published values,
the solved noise multiplier, clipping bounds one example's / one client's influence, the noise
has the stated scale, every method's upload is privatised, DP-SGD runs for every method, and the
command line end to end (results.json, TensorBoard, resume, preset)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from fedmoap.config.digest import added_section_defaults, config_digest
from fedmoap.config.sections import DPArgs, TrainArgs
from fedmoap.federation.dp_budget import epsilon, solve_noise_multiplier
from fedmoap.federation.dp_sgd import clipped_sum, noisy_mean, private_parameters
from fedmoap.federation.privacy import clip_and_noise
from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from fedmoap.run.cli import main
from fedmoap.run.parse import parse_fit
from fedmoap.seeding import torch_generator
from tests.worlds import tiny_federation, tiny_world

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
METHODS = registry()
TRAINED = [name for name, cls in METHODS.items() if cls.trains]
SMALL = {
    "n_ctx": 4,
    "d_gating": 32,
    "heads": 4,
    "num_experts": 2,
    "vision_tokens": 2,
    "rank": 2,
    "depth": 2,
    "text_blocks": [1, 2],
    "vision_blocks": [1, 2],
    "text_depth": 2,
    "vision_depth": 2,
}
NUM_CLIENTS = 4


# ---------------------------------------------------------------------------- the accountant
def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of a mu-GDP mechanism at ``delta`` (Dong, Roth, Su 2019, Cor. 2.13; Balle & Wang 2018,
    Thm. 8): δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), solved for ε by bisection. k uploads with
    noise multiplier z (no sampling) are exactly sqrt(k)/z-GDP."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        d = phi(-mid / mu + mu / 2) - math.exp(mid) * phi(-mid / mu - mu / 2)
        lo, hi = (mid, hi) if d > delta else (lo, mid)
    return hi


def test_rdp_matches_opacus_published_example():
    """Opacus's documentation of ``compute_dp_sgd_privacy`` (opacus.ai/api/compute_dp_sgd_privacy):
    sample rate 1 %, noise multiplier 1.0, 300 steps (3 epochs), delta 1e-5, orders 2, 5, 10,
    20, 100 satisfy (2.39, 1e-5)-DP."""
    assert epsilon(1.0, 0.01, 300, 1e-5, "rdp", alphas=(2, 5, 10, 20, 100)) == pytest.approx(2.39, abs=0.005)


@pytest.mark.parametrize("z,k,delta", [(2.02, 10, 1e-5), (12.8, 10, 1e-5), (0.39, 10, 0.05)])
def test_client_level_accounting_matches_the_exact_gaussian(z, k, delta):
    """q = 1 (client_upload): the PRV accountant equals the exact composition of Gaussians (its
    eps_error is 0.01); RDP is an upper bound, a little looser."""
    exact = exact_gaussian_epsilon(math.sqrt(k) / z, delta)
    prv, rdp = epsilon(z, 1.0, k, delta, "prv"), epsilon(z, 1.0, k, delta, "rdp")
    assert prv == pytest.approx(exact, abs=0.03 + 0.002 * exact)
    assert exact - 0.01 <= rdp <= exact * 1.15 + 0.1


def test_accountant_reproduces_the_spec_table():
    """notes/spec-baselines-dp-eval.md §3.2 (computed there with Opacus 1.6): client-level, 10
    uploads, epsilon 8 at delta 1e-5 needs z = 2.02 (RDP) / 1.90 (PRV), epsilon 1 needs 12.8 /
    12.0; record-level, q = 0.1 and 500 steps at z = 1.0 gives epsilon(0.05) = 9.5 / 7.7."""
    assert epsilon(2.02, 1.0, 10, 1e-5, "rdp") == pytest.approx(8.0, abs=0.05)
    assert epsilon(1.90, 1.0, 10, 1e-5, "prv") == pytest.approx(8.0, abs=0.05)
    assert epsilon(12.8, 1.0, 10, 1e-5, "rdp") == pytest.approx(1.0, abs=0.01)
    assert epsilon(1.0, 0.1, 500, 0.05, "rdp") == pytest.approx(9.5, abs=0.05)
    assert epsilon(1.0, 0.1, 500, 0.05, "prv") == pytest.approx(7.7, abs=0.05)
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0


@pytest.mark.parametrize(
    "accountant,plans,expect",
    [("rdp", [(1.0, 10), (1.0, 7)], 2.02), ("prv", [(1.0, 10)], 1.90), ("rdp", [(0.1, 500)], 1.64)],
)
def test_epsilon_target_solves_the_noise_multiplier(accountant, plans, expect):
    z = solve_noise_multiplier(8.0, 1e-5, plans, accountant)
    assert z == pytest.approx(expect, abs=0.01)
    spent = max(epsilon(z, q, s, 1e-5, accountant) for q, s in plans)
    assert 7.98 <= spent <= 8.0


# ---------------------------------------------------------------------------- the mechanisms
def test_upload_clipping_bounds_a_clients_influence():
    """Before noise, the released change has norm <= S, so two clients' releases (neighbouring
    federations: one client's data replaced) differ by at most 2S, whatever their updates."""
    gen = torch_generator(0, "t")
    s = 0.5
    a = {"prompt": torch.randn(4, 8, generator=gen) * 100, "vision": torch.randn(3, generator=gen)}
    b = {"prompt": torch.randn(4, 8, generator=gen) * 1e-3, "vision": torch.randn(3, generator=gen) * 50}
    ra, na = clip_and_noise(a, s, 0.0, torch_generator(0, "n"))
    rb, _ = clip_and_noise(b, s, 0.0, torch_generator(0, "n"))
    norm = lambda d: math.sqrt(sum(float(v.double().square().sum()) for v in d.values()))  # noqa: E731
    assert na > 100 and norm(ra) == pytest.approx(s, rel=1e-6)
    assert norm({k: ra[k] - rb[k] for k in ra}) <= 2 * s + 1e-6
    small = {"prompt": torch.full((2,), 0.01)}
    assert torch.equal(clip_and_noise(small, s, 0.0, torch_generator(0, "n"))[0]["prompt"], small["prompt"])


def test_upload_noise_has_the_stated_scale():
    z, s = 1.7, 0.3
    zero = {"a": torch.zeros(300, 200), "b": torch.zeros(40_000)}
    out, _ = clip_and_noise(zero, s, z, torch_generator(0, "noise"))
    values = torch.cat([v.flatten() for v in out.values()]).double()
    assert float(values.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(values.std()) == pytest.approx(z * s, rel=0.01)
    again, _ = clip_and_noise(zero, s, z, torch_generator(0, "noise"))
    assert all(torch.equal(out[k], again[k]) for k in out)  # seeded


def test_record_noise_has_the_stated_scale():
    z, c, expected = 1.3, 0.7, 12.5
    g = noisy_mean(torch.zeros(100_000), c, z, expected, torch_generator(0, "x"))
    assert float(g.double().std()) == pytest.approx(z * c / expected, rel=0.02)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, the synthetic dataset split over 4 clients, every input a method can read."""
    torch.manual_seed(0)
    return tiny_world(tmp_path_factory.mktemp("cache"), NUM_CLIENTS, num_views=1)


def federation(world, name, tmp_path: Path, dp: DPArgs | None = None) -> Federation:
    backbone, classnames, data = world
    cls = METHODS[name]
    knobs = {f.name for f in dataclasses.fields(cls)}
    method = cls(**{k: v for k, v in SMALL.items() if k in knobs})
    train = TrainArgs(local_epochs=1, batch_size=8)
    return tiny_federation(
        world,
        method,
        tmp_path / "clients",
        rounds=2,
        dp=dp,
        local_epochs=train.local_epochs,
        batch_size=train.batch_size,
    )


def received(fed: Federation) -> dict:
    """Run round 1; what the server's aggregate was given, and what each client was sent."""
    got, sent = {}, {}
    aggregate, payload = fed.server.aggregate, fed.server.payload

    def spy_aggregate(t, uploads, weights):
        got.update({c: {k: v.clone() for k, v in u.items()} for c, u in uploads.items()})
        return aggregate(t, uploads, weights)

    def spy_payload(cid, t):
        sent[cid] = {k: v.clone() for k, v in payload(cid, t).items()}
        return sent[cid]

    fed.server.aggregate, fed.server.payload = spy_aggregate, spy_payload
    record = fed.run_round(1, progress=False)
    return got, sent, record


@pytest.mark.parametrize("name", TRAINED)
def test_every_methods_upload_is_privatised(world, tmp_path, name):
    """One round with and without client_upload: the server receives reference + clip(change) +
    noise of std z·S (the reference: what the server sent), never the raw upload."""
    z, s = 2.0, 0.05
    plain, _, _ = received(federation(world, name, tmp_path / "off"))
    fed = federation(world, name, tmp_path / "dp", DPArgs(mode="client_upload", clip=s, noise_multiplier=z))
    noisy, sent, record = received(fed)
    assert set(noisy) == set(plain)
    if not any(plain.values()):  # a method that uploads nothing: nothing to protect
        assert record["eps_rdp"] == 0.0 and fed.privacy.summary["notes"]
        return
    residuals = []
    for cid, up in plain.items():
        init = fed.module.global_init()
        ref = {k: sent[cid].get(k, init.get(k, torch.zeros_like(up[k]))) for k in up}  # the documented rule
        change = {k: up[k] - ref[k] for k in up}
        norm = math.sqrt(sum(float(v.double().square().sum()) for v in change.values()))
        factor = min(1.0, s / norm)
        for k in up:
            assert not torch.equal(noisy[cid][k], up[k])
            residuals.append((noisy[cid][k] - ref[k] - factor * change[k]).flatten())
    res = torch.cat(residuals).double()
    assert float(res.std()) == pytest.approx(z * s, rel=0.15)
    assert record["eps_rdp"] == pytest.approx(epsilon(z, 1.0, 1, 1e-5, "rdp"))
    assert fed.privacy.summary["steps"] == 1 and fed.privacy.summary["adjacency"] == "client"


@pytest.mark.parametrize("name", TRAINED)
def test_dp_sgd_trains_every_method(world, tmp_path, name):
    """record_sgd: per-example gradients (torch.func) work for every method's parameters, the
    accountant counts every Poisson step, and the state still round-trips."""
    fed = federation(world, name, tmp_path, DPArgs(mode="record_sgd", clip=1.0, noise_multiplier=1.0))
    record = fed.run_round(1, progress=False)
    if not fed.privacy.accountant.active:
        assert record["eps_rdp"] == 0.0
        return
    steps = [math.ceil(fed.data.train_size(c) / 8) for c in range(NUM_CLIENTS)]  # 1 epoch, B = 8
    assert record["eps_rdp"] == pytest.approx(max(epsilon(1.0, 1 / s, s, 1e-5) for s in steps))
    assert record["dp_median_norm"] > 0
    fed.module.load_client(0, None)
    fresh, trained = fed.module.client_state()["params"], fed.store.get(0)["params"]
    server, init = getattr(fed.server, "global_state", {}), fed.module.global_init()
    moved = any(not torch.equal(fresh[k], trained[k]) for k in fresh) or any(
        not torch.equal(v, init[k]) for k, v in server.items() if k in init
    )
    assert moved, "DP-SGD trained nothing: neither the client's state nor the server's moved"


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


# ---------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


def run(tmp_path: Path, cache: Path, *extra: str) -> dict:
    rc = main(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--fed.rounds",
            "2",
            "--run_dir",
            str(tmp_path / "run"),
            "--data.feature_cache",
            str(cache),
            "--progress",
            "false",
            *extra,
        ]
    )
    assert rc == 0
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_command_line_client_upload_end_to_end(tmp_path, cache):
    res = run(tmp_path, cache, "--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.epsilon", "8")
    p = res["privacy"]
    assert p["mode"] == "client_upload" and p["adjacency"] == "client" and p["sample_rate"] == 1.0
    assert p["clip"] == 0.5 and p["delta"] == 1e-5 and p["eps_rdp"] <= 8.0 and p["eps_prv"] < p["eps_rdp"]
    # the smoke config samples 3 of 6 clients per round: someone uploads twice in 2 rounds
    assert p["steps"] == 2 and p["eps_rdp"] == pytest.approx(8.0, abs=0.02)
    assert [r["eps_rdp"] <= p["eps_rdp"] for r in res["rounds"]] == [True, True]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "version_0"))
    acc.Reload()
    assert {"privacy/eps_rdp", "privacy/eps_prv"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("privacy/eps_rdp")] == [1, 2]
    # extended run (participants 1,3,4 then 1,4,5: client 1 uploads 3 times): same z, so
    # epsilon continues from the recorded rounds past the target, and the run says so
    res4 = run(
        tmp_path, cache, "--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.epsilon", "8", "--fed.rounds", "4"
    )
    assert res4["privacy"]["noise_multiplier"] == p["noise_multiplier"]
    assert res4["rounds"][:2] == res["rounds"] and res4["privacy"]["steps"] == 3
    assert res4["privacy"]["eps_rdp"] == pytest.approx(epsilon(p["noise_multiplier"], 1.0, 3, 1e-5))
    assert any("extended" in n for n in res4["privacy"]["notes"])


def test_preset_prints_what_the_budget_means(tmp_path, cache, capsys):
    res = run(
        tmp_path,
        cache,
        "--dp.mode",
        "client_upload",
        "--dp.clip",
        "0.5",
        "--dp.preset",
        "pfedmoap-appendix",
        "--fed.rounds",
        "1",
    )
    err = capsys.readouterr().err
    assert err.count("dp.preset pfedmoap-appendix") == 1
    assert "e^50" in err and "1/n" in err
    assert res["privacy"]["delta"] == 0.05 and res["privacy"]["target_epsilon"] == 50.0


def test_dp_off_keeps_the_digest_and_old_runs_resume(tmp_path, cache):
    """Without DP a run's config digest is the one of fedmoap before the ``dp:`` section, and
    a run directory made then (config.yaml without ``dp``) resumes."""
    res = run(tmp_path, cache, "--fed.rounds", "1")
    assert "privacy" not in res and "eps_rdp" not in res["rounds"][0]
    cfg_path = tmp_path / "run" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["dp"] == added_section_defaults()["dp"]
    old = {k: v for k, v in cfg.items() if k != "dp"}
    assert config_digest(old) == config_digest(cfg)
    cfg_path.write_text(yaml.safe_dump(old, sort_keys=False))
    res2 = run(tmp_path, cache, "--fed.rounds", "2")
    assert res2["rounds"][0] == res["rounds"][0] and len(res2["rounds"]) == 2


def test_replace_adjacency_doubles_the_sensitivity(tmp_path, cache):
    """Under replace-one adjacency a target epsilon solves twice the noise of add/remove, the
    accountant sees half the noise multiplier, and results.json states which was used."""
    dp = ["--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.epsilon", "8", "--fed.rounds", "1"]
    add = run(tmp_path / "add", cache, *dp)["privacy"]
    rep = run(tmp_path / "rep", cache, *dp, "--dp.adjacency", "replace")["privacy"]
    assert (add["neighbours"], rep["neighbours"]) == ("add_remove", "replace")
    assert (add["sensitivity"], rep["sensitivity"]) == (0.5, 1.0)
    assert rep["noise_multiplier"] == pytest.approx(2 * add["noise_multiplier"], rel=1e-9)
    assert rep["eps_rdp"] == pytest.approx(add["eps_rdp"], rel=1e-9)
    fixed = ["--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.noise_multiplier", "1.5", "--fed.rounds", "1"]
    rep_z = run(tmp_path / "rep_z", cache, *fixed, "--dp.adjacency", "replace")["privacy"]
    assert rep_z["eps_rdp"] == pytest.approx(epsilon(0.75, 1.0, 1, 1e-5))


def test_runs_made_before_a_key_existed_resume(tmp_path, cache):
    """A DP run whose config.yaml predates ``dp.adjacency`` means its default (add/remove) and
    resumes; the digest of a key added later is the same as without it while at its default."""
    dp = ["--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.noise_multiplier", "2"]
    res = run(tmp_path, cache, *dp, "--fed.rounds", "1")
    cfg_path = tmp_path / "run" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    assert cfg["dp"]["adjacency"] == "add_remove"
    old = {**cfg, "dp": {k: v for k, v in cfg["dp"].items() if k != "adjacency"}}
    assert config_digest(old) == config_digest(cfg)
    assert config_digest({**cfg, "dp": {**cfg["dp"], "adjacency": "replace"}}) != config_digest(cfg)
    cfg_path.write_text(yaml.safe_dump(old, sort_keys=False))
    res2 = run(tmp_path, cache, *dp, "--fed.rounds", "2")
    assert res2["rounds"][0] == res["rounds"][0] and len(res2["rounds"]) == 2


def test_methods_that_send_client_statistics_are_refused_under_dp(tmp_path, capsys):
    """PEP-FedPT's class prototypes (exact per-class sums and counts) would reach the server
    outside the DP mechanisms: such a method is refused before anything is written."""
    rc = main(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--method",
            "pepfedpt",
            "--dp.mode",
            "client_upload",
            "--dp.clip",
            "1",
            "--dp.noise_multiplier",
            "1",
            "--run_dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "pepfedpt" in err and "statistics" in err and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- DP-FPL (corrected)
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


def test_dp_plans_no_steps_for_held_out_clients(tmp_path):
    """Held-out clients (eval.modes unseen_clients) never train, so the accountant's plan, and the
    noise multiplier solved from it, leave them out; CoOp trains every client (the method's own
    choice), which must not bring them back. Seed 4 holds out client 0, the busiest plan: counting
    it asked for z 1.3721 instead of 1.2305."""
    from fedmoap.federation.build import build_federation
    from fedmoap.federation.rounds import default_fabric

    cfg, _, _ = parse_fit(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--method",
            "coop",
            "--method.epochs",
            "2",
            "--seed",
            "4",
            "--eval.modes",
            "[local,unseen_clients]",
            "--dp.mode",
            "record_sgd",
            "--dp.clip",
            "1.0",
            "--dp.epsilon",
            "8",
            "--data.feature_cache",
            str(tmp_path / "cache"),
        ]
    )
    fed, resolved = build_federation(cfg, run_dir=tmp_path / "run", fabric=default_fabric())
    privacy = fed.privacy.accountant
    planned = privacy.planned
    assert resolved.held_out == [0] and planned[0] == 0
    assert all(planned[c] > 0 for c in fed.schedule.clients)
    plans = [(privacy.sample_rate(c), s) for c, s in planned.items() if s > 0]
    assert privacy.noise_multiplier == solve_noise_multiplier(8.0, cfg.dp.delta, plans)
    assert round(privacy.noise_multiplier, 4) == 1.2305
