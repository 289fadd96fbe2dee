"""pFedDC (reconstruction, spec §1.8): the PromptFL reduction is exact, the upload is exactly the
global prompts, private parts stay private and untouched for non-participants, gradients reach
every trainable part, the fusion module is MultiheadAttention, deep text prompts are exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import TrainArgs
from fedmoap.federation.rounds import Federation
from fedmoap.methods.base import HeldOut, RunContext
from fedmoap.methods.pfeddc import PFedDC
from tests.worlds import first_batch, fit_smoke, results, tiny_federation, tiny_world

SMALL = dict(n_ctx=4, vision_tokens=2, fusion_heads=4)
N = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("cache"), N)


def client(world, **knobs):
    backbone, classnames, _ = world
    method = PFedDC(**{**SMALL, **knobs})
    run = RunContext(0, N, TrainArgs(local_epochs=1, batch_size=8), True)
    module = method.build_client(backbone, classnames, run)
    module.load_client(0, None)
    return method, module


def federation(world, tmp_path, participation=0.5, **knobs) -> Federation:
    backbone, classnames, data = world
    method = PFedDC(**{**SMALL, **knobs})
    return tiny_federation(world, method, tmp_path / "clients", participation=participation, rounds=4, keep=True)


def fit(tmp_path: Path, name: str, *args: str) -> dict:
    return results(fit_smoke(tmp_path / name, "--fed.rounds", "2", *args))


def test_vision_off_and_no_fusion_is_promptfl_exactly(tmp_path):
    """Same seed and split: the same per-client accuracies in every round, the same prompt."""
    ours = fit(tmp_path, "pfeddc", "--method", "pfeddc", "--method.vision", "false", "--method.fusion", "none")
    ref = fit(tmp_path, "promptfl", "--method", "promptfl")
    assert [r["clients"] for r in ours["rounds"]] == [r["clients"] for r in ref["rounds"]]
    assert [r["bytes_up"] for r in ours["rounds"]] == [r["bytes_up"] for r in ref["rounds"]]
    a = torch.load(sorted((tmp_path / "pfeddc" / "checkpoints").iterdir())[-1], weights_only=True)
    b = torch.load(sorted((tmp_path / "promptfl" / "checkpoints").iterdir())[-1], weights_only=True)
    assert torch.equal(a["server"]["global"]["prompt"], b["server"]["global"]["prompt"])
    assert PFedDC(vision=False, fusion="none").required_inputs() == {"features"}
    assert PFedDC().required_inputs() == {"pixels"}


def test_vision_off_sum_fusion_is_a_two_prompt_coop(world):
    _, module = client(world, vision=False, fusion="sum")
    with torch.no_grad():
        expected = F.normalize(module.backbone.encode_prompts(module.slots, module.ctx + module.local_text[0]), dim=-1)
        assert torch.equal(module.text_features(), expected)


@pytest.mark.parametrize(
    "knobs,shape",
    [({}, (4, 2)), ({"fusion_query": "both"}, (8, 4)), ({"fusion": "concat"}, (8, 4)), ({"fusion": "sum"}, (4, 2))],
)
def test_fused_shapes_and_text_path_equals_coop_on_the_same_tensor(world, knobs, shape):
    _, module = client(world, **knobs)
    backbone = module.backbone
    with torch.no_grad():
        fused_text = module.fuse(module.ctx, module.local_text[0], getattr(module, "fusion_text", None), 0)
        fused_vision = module.vision_prompts()[0]
        assert fused_text.shape == (shape[0], backbone.ctx_width)
        assert fused_vision.shape == (shape[1], backbone.vision_width)
        coop = F.normalize(backbone.encode_prompts(module.slots, fused_text), dim=-1)
        assert torch.equal(module.text_features(), coop)


def test_upload_is_exactly_the_global_prompts(world):
    _, module = client(world)
    up = module.upload()
    assert set(up) == {"prompt", "vision"}
    assert torch.equal(up["prompt"], module.ctx.detach()) and torch.equal(up["vision"], module.global_vision.detach())
    _, deep = client(world, text_depth=2, vision_depth=2)
    assert set(deep.upload()) == {"prompt", "prompt_deep", "vision"}
    _, text_only = client(world, vision=False)
    assert set(text_only.upload()) == {"prompt"}


def test_private_parts_are_per_client_and_untouched_for_non_participants(world, tmp_path):
    fed = federation(world, tmp_path)
    private = ["local_text", "local_vision"] + [
        k for k in dict(fed.module.named_parameters()) if k.startswith("fusion_")
    ]
    schedule = fed.schedule
    t = next(t for t in range(2, 50) if set(schedule.participants(t - 1)) - set(schedule.participants(t)))
    for r in range(1, t):
        fed.run_round(r, progress=False)
    idle = sorted(set(schedule.participants(t - 1)) - set(schedule.participants(t)))
    before = {c: fed.store.get(c)["params"] for c in idle}
    fed.run_round(t, progress=False)
    for c in idle:
        after = fed.store.get(c)["params"]
        for key in private:
            assert torch.equal(before[c][key], after[key]), (c, key)
    trained = [c for c in range(N) if c in fed.store]
    a, b = (fed.store.get(c)["params"] for c in trained[:2])
    assert not torch.equal(a["local_text"], b["local_text"])  # client-seeded, trained apart
    assert all(not k.startswith(("local", "fusion")) for k in fed.server.state_dict()["global"])


@pytest.mark.parametrize("knobs", [{}, {"vision_depth": 2, "text_depth": 2}, {"fusion_query": "both"}])
def test_gradients_reach_global_local_and_fusion_in_one_backward(world, knobs):
    _, _, data = world
    _, module = client(world, **knobs)
    batch = next(iter(data.train_batches(0, 1, 8)(0)))
    module.training_step(batch).backward()
    names = [n for n, _ in module.named_parameters()]
    assert {"ctx", "local_text", "global_vision", "local_vision"} <= set(names)
    assert any(n.startswith("fusion_text") for n in names) and any(n.startswith("fusion_vision") for n in names)
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in module.backbone.parameters())


def test_deep_text_prompts(world):
    backbone = world[0]
    slots = backbone.prepare_prompts(["red.", "a blue square."], 3)
    ctx = torch.randn(2, 3, backbone.ctx_width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # two evaluation orders of the same float32 sums: equal to rounding, at the scale of the outputs
        assert torch.allclose(
            backbone.encode_prompts_deep(slots, [ctx[0]]), backbone.encode_prompts(slots, ctx[0]), atol=1e-5
        )
        t = backbone.text
        x = torch.cat([slots.prefix, ctx[0].expand(2, -1, -1), slots.suffix], 1)
        x = x + t.positional_embedding[: x.shape[1]]
        mask = t.attn_mask[: x.shape[1], : x.shape[1]]
        blocks = t.transformer.resblocks
        first = t.transformer.batch_first
        run = (
            (lambda b, h: b(h, attn_mask=mask))
            if first
            else (lambda b, h: b(h.transpose(0, 1), attn_mask=mask).transpose(0, 1))
        )
        x = run(blocks[0], x)
        x = torch.cat([x[:, :1], ctx[1].expand(2, -1, -1), x[:, 4:]], 1)
        x = t.ln_final(run(blocks[1], x))
        reference = x[torch.arange(2), slots.extra["eot"]] @ t.text_projection
        assert torch.allclose(backbone.encode_prompts_deep(slots, list(ctx)), reference, atol=1e-5)


def test_two_stage_schedule_trains_global_then_private(world):
    backbone, classnames, data = world
    method = PFedDC(**SMALL, schedule="two_stage")
    run = RunContext(0, N, TrainArgs(local_epochs=2, batch_size=8), True)
    module = method.build_client(backbone, classnames, run)
    module.load_client(0, None)
    built = module.configure_optimizers()
    lambdas = built["lr_scheduler"]["scheduler"].lr_lambdas
    assert lambdas[0](0) == 1.0 and lambdas[1](0) == 0.0 and lambdas[0](1) == 0.0 and lambdas[1](1) > 0


def test_knob_checks():
    assert any("fusion_dim" in p for p in PFedDC(fusion_heads=8, fusion_dim=12).problems())
    assert any("two_stage" in p for p in PFedDC(fusion="none", schedule="two_stage").problems())
    resnet = OpenCLIPBackbone.build("fedmoap-tiny-rn", None, seed=0)
    assert any("ViT" in p for p in PFedDC().backbone_problems(resnet))
    assert PFedDC(vision=False, fusion_heads=4).backbone_problems(resnet) == []


@pytest.mark.parametrize(
    "knobs, alone",
    [
        ({}, True),
        ({"text_depth": 2, "vision_depth": 2}, True),
        ({"fusion_query": "global"}, True),
        ({"fusion": "sum"}, True),
        ({"fusion": "concat"}, False),
    ],
)
def test_never_trained_client_is_the_global_prompts_alone(world, knobs, alone):
    """Whatever its cid (the seed of its random local prompts and fusion modules), a never-trained
    client predicts with the global prompts alone: as F = G exactly where the fused prompt has the
    global prompt's width, as [G; G] where it is two prompts wide."""
    _, init = client(world, **knobs)
    gen = torch.Generator().manual_seed(1)
    download = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in init.global_init().items()}
    batch = {k: v for k, v in first_batch(world).items() if k != "label"}

    def unseen(cid, **extra):
        _, module = client(world, **{**knobs, **extra})
        module.load_client(cid, None)
        module.prepare_unseen(HeldOut(cid, 0, lambda up: download, None, torch.zeros(1), lambda: None))
        module.begin_eval()
        with torch.no_grad():
            return module.predict(batch)

    assert torch.equal(unseen(N), unseen(N + 1))
    if alone:
        torch.testing.assert_close(unseen(N), unseen(N, fusion="none"), atol=1e-5, rtol=1e-5)
