"""Differential privacy (``dp:``, fedmoap/federation/privacy.py): clipping bounds one client's
influence, the upload noise has the stated scale, every method's upload is privatised, DP-SGD runs
for every method, and the command line end to end (results.json, TensorBoard, resume, preset).
The accountant is tested in test_dp_budget.py, per-example clipping in test_dp_sgd.py."""

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
from fedmoap.federation.privacy import clip_and_noise
from fedmoap.federation.rounds import Federation
from fedmoap.methods import registry
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
