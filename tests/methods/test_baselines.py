"""The baselines of pFedMoAP's tables (PromptFL+FT/FedProx/FedPer/FedAMP, pFedPrompt, FedOTP,
FedPGP): the reference codes' bugs cannot happen here.

- every regulariser has a gradient on the live parameters (FedProx/FedAMP reference codes build
  their proximal terms from detached tensors);
- every private part survives rounds untouched by the server and differs between clients (FLiP
  averages FedOTP's local prompt and re-copies FedPGP's U, V from the server);
- uploads are exactly the shared parts;
- logits have one column per class (FedPGP's script doubles every class);
- PromptFL+FT's fine-tuned copy never reaches the store or the server;
- FedOTP's transport plan is exact in fp32 and finite in the log domain where exp(-C/eps)
  underflows; FedAMP's self weight is never negative.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone, _attnpool_all
from fedmoap.config.sections import DataArgs, TrainArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.federation.rounds import Federation
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.federated_data import gather_inputs
from fedmoap.inputs.pixels import PixelCache
from fedmoap.methods import registry
from fedmoap.methods.base import INPUTS, RunContext
from fedmoap.methods.fedamp import FedAMP, FedAMPServer
from fedmoap.methods.fedotp import transport_plan
from fedmoap.run.parse import parse_fit
from tests.worlds import tiny_federation

METHODS = registry()
NEW = ["promptfl_ft", "fedprox", "fedper", "fedamp", "pfedprompt", "fedotp", "fedpgp"]
SMALL = {
    "n_ctx": 4,
    "d_gating": 32,
    "heads": 4,
    "num_experts": 2,
    "vision_tokens": 2,
    "bottleneck": 2,
    "ft_epochs": 1,
    "depth": 2,
    "text_blocks": [1, 2],
    "vision_blocks": [1, 2],
    "text_depth": 2,
    "vision_depth": 2,
}
NUM_CLIENTS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT, synthetic data over 4 clients (plain features only), features, tokens and pixels."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    args = DataArgs(
        source="synthetic",
        num_clients=NUM_CLIENTS,
        partition="pathological",
        shots=4,
        max_test_per_client=12,
        num_views=0,
    )
    source = load_source(args)
    split = make_split(args, source, seed=0)
    root = tmp_path_factory.mktemp("cache")
    data = gather_inputs(
        INPUTS,
        args,
        source,
        split,
        FeatureCache(root, backbone),
        FeatureCache(root, backbone, tokens=True),
        PixelCache(root, backbone),
        seed=0,
    )
    data.backbone = backbone
    return backbone, source.classnames, data


def federation(world, name: str, tmp_path: Path, **knobs) -> Federation:
    backbone, classnames, data = world
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    method = cls(**{**{k: v for k, v in SMALL.items() if k in fields}, **knobs})
    return tiny_federation(world, method, tmp_path / "clients")


def a_batch(fed: Federation, cid: int = 0) -> dict:
    return next(iter(fed.data.train_batches(cid, 1, 8)(0)))


# ---------------------------------------------------------------------------- regularisers
def test_fedprox_term_has_the_gradient_of_the_live_parameter(world, tmp_path):
    fed = federation(world, "fedprox", tmp_path, mu=0.5)
    m = fed.module
    m.load_client(0, None)
    m.receive(fed.server.payload(0, 1))
    with torch.no_grad():
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    m.ctx.grad = None
    m.proximal().backward()
    expected = 0.5 * (m.ctx - m.anchor).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(m.ctx.grad, expected)


def test_fedamp_term_has_the_gradient_of_the_live_parameter(world, tmp_path):
    fed = federation(world, "fedamp", tmp_path, lam=1.0, alpha=0.5)
    m = fed.module
    m.load_client(0, None)
    payload = fed.server.payload(0, 1)
    assert float(payload["prox_weight"]) == pytest.approx(1.0 / (2 * 0.5))
    m.receive(payload)
    with torch.no_grad():
        m.ctx.add_(0.1 * torch.randn_like(m.ctx))
    m.ctx.grad = None
    m.proximal().backward()
    expected = 2 * m.prox_weight * (m.ctx - m.cloud).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(m.ctx.grad, expected)


def test_fedpgp_contrastive_loss_reaches_sigma_u_and_v(world, tmp_path):
    fed = federation(world, "fedpgp", tmp_path)
    m = fed.module
    m.load_client(0, None)
    full, sigma = m.text_features(torch.stack([m.personal_prompt(), m.ctx]))
    m.contrastive(full, sigma).backward()
    for name in ("ctx", "u", "v"):
        grad = getattr(m, name).grad
        assert grad is not None and grad.abs().sum() > 0, f"no contrastive gradient on {name}"


def test_fedpgp_anchor_is_the_hand_crafted_prompt_or_the_placeholder(world, tmp_path):
    backbone, classnames, _ = world
    m = federation(world, "fedpgp", tmp_path).module
    slots = backbone.prepare_prompts([f"a photo of a {c}." for c in classnames], 0)
    torch.testing.assert_close(m.anchor, F.normalize(backbone.encode_prompts(slots), dim=-1))
    p = federation(world, "fedpgp", tmp_path, anchor="placeholder").module
    x = backbone.embed_tokens("X X X X")
    torch.testing.assert_close(p.anchor, F.normalize(backbone.encode_prompts(p.slots, x), dim=-1))


def test_fedotp_loss_reaches_both_prompts(world, tmp_path):
    fed = federation(world, "fedotp", tmp_path)
    m = fed.module
    m.load_client(0, None)
    m.training_step(a_batch(fed)).backward()
    assert m.ctx.grad.abs().sum() > 0 and m.local.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- private parts
PRIVATE = {
    "fedotp": lambda m: {"local": m.local.detach().clone()},
    "fedpgp": lambda m: {"u": m.u.detach().clone(), "v": m.v.detach().clone()},
    "fedper": lambda m: {"personal": m.ctx.detach()[~m.shared].clone()},
    "fedamp": lambda m: {"prompt": m.ctx.detach().clone()},
    "pfedprompt": lambda m: {"keys": m.cache_keys.clone(), "values": m.cache_values.clone()},
}


@pytest.mark.parametrize("name", list(PRIVATE))
def test_private_parts_survive_rounds_and_differ_between_clients(world, tmp_path, name):
    fed = federation(world, name, tmp_path)
    for t in (1, 2):
        fed.run_round(t, progress=False)
    server_tensors = [v for v in _tensors(fed.server.state_dict())]
    private = {}
    for cid in range(NUM_CLIENTS):
        fed.module.load_client(cid, fed.store.get(cid))
        private[cid] = PRIVATE[name](fed.module)
        fed.module.prepare_eval(fed.server.eval_payload(cid))  # evaluated with its own part
        _same(PRIVATE[name](fed.module), private[cid], f"{name} client {cid} after prepare_eval")
        if name != "fedamp":  # FedAMP's client restarts from u_i by design (amp_init: u)
            fed.module.load_client(cid, fed.store.get(cid))
            fed.module.receive(fed.server.payload(cid, 3))  # next round starts from it
            _same(PRIVATE[name](fed.module), private[cid], f"{name} client {cid} after receive")
        for part in private[cid].values() if name != "fedamp" else ():  # FedAMP uploads w_i
            assert not any(s.shape == part.shape and torch.equal(s, part) for s in server_tensors), (
                f"{name}: the server holds client {cid}'s private part"
            )
    for key in private[0]:
        assert not torch.equal(private[0][key], private[1][key]), f"{name}: {key} equal for clients 0, 1"


def test_fedamp_previous_keeps_the_personal_prompt_at_receive(world, tmp_path):
    fed = federation(world, "fedamp", tmp_path, amp_init="previous")
    fed.run_round(1, progress=False)
    fed.module.load_client(1, fed.store.get(1))
    before = fed.module.ctx.detach().clone()
    payload = fed.server.payload(1, 2)
    fed.module.receive(payload)
    assert torch.equal(fed.module.ctx, before) and not torch.equal(payload["prompt"], before)


UPLOADS = {
    "promptfl_ft": "prompt",
    "fedprox": "prompt",
    "fedamp": "prompt",
    "pfedprompt": "prompt",
    "fedotp": "prompt",
    "fedpgp": "prompt",
    "fedper": "shared",
}


@pytest.mark.parametrize("name", NEW)
def test_uploads_are_exactly_the_shared_parts(world, tmp_path, name):
    fed = federation(world, name, tmp_path)
    upload, state = fed.train_client(1, 0, fed.server.payload(0, 1))
    assert set(upload) == {UPLOADS[name]}
    m = fed.module
    shared = m.ctx.detach()[m.shared] if name == "fedper" else m.ctx.detach()
    assert torch.equal(upload[UPLOADS[name]], shared)
    if name == "fedper":
        assert upload["shared"].shape[0] == len(m.ctx) - len(m.ctx) // 2
        assert m.shared.tolist() == [True, True, False, False]  # personal = next to the class name
    uploaded = upload[UPLOADS[name]].numel()
    private = sum(p.numel() for p in m.parameters()) - uploaded
    expected = {
        "fedotp": lambda: m.local.numel(),
        "fedpgp": lambda: m.u.numel() + m.v.numel(),
        "fedper": lambda: len(m.ctx) // 2 * m.ctx.shape[1],
    }.get(name, lambda: 0)()
    assert private == expected


@pytest.mark.parametrize("name", list(METHODS))
def test_one_logit_per_class(world, tmp_path, name):
    fed = federation(world, name, tmp_path)
    m = fed.module
    m.load_client(0, None)
    m.prepare_eval(fed.server.eval_payload(0))
    batch = a_batch(fed)
    label = batch.pop("label")
    assert tuple(m(batch).shape) == (len(label), len(world[1]))
    m.begin_eval()
    assert tuple(m.predict(batch).shape) == (len(label), len(world[1]))


# ---------------------------------------------------------------------------- PromptFL+FT
def test_promptfl_ft_fine_tunes_a_copy_that_is_never_kept(world, tmp_path):
    fed = federation(world, "promptfl_ft", tmp_path, ft_epochs=2)
    fed.run_round(1, progress=False)
    stored = {c: fed.store.get(c) for c in range(NUM_CLIENTS)}
    server = {k: v.clone() for k, v in fed.server.state_dict()["global"].items()}
    accs = fed.evaluate(list(range(NUM_CLIENTS)), 1)
    assert not torch.equal(fed.module.ctx.detach(), server["prompt"])  # the copy was trained
    for c in range(NUM_CLIENTS):
        _same(fed.store.get(c), stored[c], f"client {c}")
    _same(fed.server.state_dict()["global"], server, "server")
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


# ---------------------------------------------------------------------------- FedOTP's OT
def _sim(seed=0, shape=(3, 4, 49, 2)):
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.rand(shape, generator=gen) + 0.1


def test_transport_plan_marginals_and_domains_agree():
    sim = _sim()
    plain = transport_plan(sim, 0.1, 0.8, log_domain=False)
    log = transport_plan(sim, 0.1, 0.8, log_domain=True)
    torch.testing.assert_close(plain, log, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(log.sum(-2), torch.full((3, 4, 2), 0.4))  # columns: gamma / N
    assert (log.sum(-1) <= 1 / 49 * (1 + 1e-3)).all()  # rows: <= 1/M
    balanced = transport_plan(sim, 0.1, unbalanced=False)
    torch.testing.assert_close(balanced.sum(-1), torch.full((3, 4, 49), 1 / 49), atol=1e-5, rtol=1e-3)


def test_transport_plan_is_finite_in_the_log_domain_where_exp_underflows():
    sim = _sim() - 0.5  # costs 1.1 - 1.4: exp(-C / 0.01) = 0 in fp32
    assert not torch.isfinite(transport_plan(sim, 0.01, 0.8, log_domain=False)).all()
    plan = transport_plan(sim, 0.01, 0.8)  # eps < 0.05: log domain by default
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(-2), torch.full((3, 4, 2), 0.4), atol=1e-4, rtol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert transport_plan(sim.bfloat16(), 0.1, 0.8).dtype == torch.float32


def test_fedotp_logits_weight_similarities_by_a_constant_plan(world, tmp_path):
    fed = federation(world, "fedotp", tmp_path)
    m = fed.module
    m.load_client(0, None)
    batch = a_batch(fed)
    text = m.prompt_features()
    sim = torch.einsum("bmd,ncd->bcmn", batch["tokens"], text)
    plan = transport_plan(sim.detach(), 0.1, 0.8)
    expected = m.backbone.logit_scale * (plan * sim).sum((-2, -1))
    torch.testing.assert_close(m(batch), expected)
    assert not plan.requires_grad


# ---------------------------------------------------------------------------- FedAMP's server
RUN = RunContext(0, 10, TrainArgs(), True)


def test_fedamp_self_weight_is_guarded_for_identical_prompts():
    method = FedAMP(variant="attentive", sigma=1.0, alpha=1.0)
    server = FedAMPServer(method, {"prompt": torch.zeros(2, 3)}, RUN)
    server.aggregate(1, {c: {"prompt": torch.ones(2, 3)} for c in range(10)}, dict.fromkeys(range(10), 1))
    others, xi, alpha = server.message_weights(0)
    assert len(others) == 9 and alpha == pytest.approx(1 / 9)  # unguarded: xi_ii = 1 - 9 = -8
    assert 1 - float(xi.sum()) >= -1e-12
    torch.testing.assert_close(server.cloud(0)[0], torch.ones(2, 3))


def test_fedamp_weights_follow_the_formulas():
    prompts = {c: torch.randn(2, 3, generator=torch.Generator().manual_seed(c)) for c in range(4)}
    heur = FedAMPServer(FedAMP(variant="heuristic", xi=0.5, sigma_h=10.0), {"prompt": torch.zeros(2, 3)}, RUN)
    heur.aggregate(1, {c: {"prompt": p} for c, p in prompts.items()}, dict.fromkeys(prompts, 1))
    cos = torch.stack([F.cosine_similarity(prompts[j].flatten(), prompts[0].flatten(), dim=0) for j in (1, 2, 3)])
    w = 0.5 * torch.softmax(10 * cos.double(), 0)
    u = 0.5 * prompts[0] + sum(float(w[i]) * prompts[j] for i, j in enumerate((1, 2, 3)))
    torch.testing.assert_close(heur.cloud(0)[0], u)
    att = FedAMPServer(FedAMP(variant="attentive", sigma=100.0, alpha=1.0), {"prompt": torch.zeros(2, 3)}, RUN)
    att.aggregate(1, {c: {"prompt": p} for c, p in prompts.items()}, dict.fromkeys(prompts, 1))
    d = torch.stack([(prompts[j] - prompts[0]).square().sum() for j in (1, 2, 3)]).double()
    xi = torch.exp(-d / 100) / 100  # small: no clamping
    u = (1 - xi.sum()) * prompts[0].double() + sum(xi[i] * prompts[j].double() for i, j in enumerate((1, 2, 3)))
    torch.testing.assert_close(att.cloud(0)[0], u.float())
    auto = FedAMPServer(FedAMP(variant="attentive", sigma="auto"), {"prompt": torch.zeros(2, 3)}, RUN)
    every = torch.stack([p.flatten() for p in prompts.values()]).double()
    pair = torch.pdist(every).square()
    assert FedAMPServer.auto_sigma(every[0], every[1:]) == pytest.approx(float(pair.median()))
    assert auto.cloud(7)[0].shape == (2, 3)  # never uploaded: w = init


def test_fedamp_sigma_takes_auto_or_a_number():
    assert parse_fit(["fit", "--method", "fedamp", "--method.sigma", "auto"])[0].method.sigma == "auto"
    assert parse_fit(["fit", "--method", "fedamp", "--method.sigma", "0.3"])[0].method.sigma == 0.3


# ---------------------------------------------------------------------------- pFedPrompt
def test_pfedprompt_cache_holds_the_clients_training_features(world, tmp_path):
    fed = federation(world, "pfedprompt", tmp_path)
    upload, state = fed.train_client(1, 2, fed.server.payload(2, 1))
    assert set(upload) == {"prompt"}
    keys, values = state["extra"]["cache_keys"], state["extra"]["cache_values"]
    data = fed.data
    feats = data.train.features[0, data.train_pos[2]]
    labels = data.train_labels(2)
    assert len(keys) == len(feats)
    order = [int(torch.nonzero((keys == f).all(1))[0]) for f in feats]
    torch.testing.assert_close(values[order], F.one_hot(labels, len(world[1])).float())
    m = fed.module
    m.begin_eval()
    batch = next(data.test_batches(2, 64))
    batch.pop("label")
    cache = torch.exp(-5.5 * (1 - batch["features"] @ keys.t())) @ values
    torch.testing.assert_close(m.predict(batch), m.logits(batch, m.text_features()) + cache)


# ---------------------------------------------------------------------------- token features
def test_modified_resnet_tokens_are_the_attention_pool_at_every_position():
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)
    x = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        every = _attnpool_all(backbone.model.visual, x)
        pooled = backbone.encode_image(x)
        tokens = backbone.encode_image_tokens(x)
    assert torch.equal(every[:, 0], pooled)  # position 0 = encode_image
    grid = backbone.model.visual.attnpool.positional_embedding.shape[0] - 1
    assert tokens.shape == (3, grid, backbone.embed_dim) and torch.equal(tokens, every[:, 1:])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _same(a: dict, b: dict, where: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where
