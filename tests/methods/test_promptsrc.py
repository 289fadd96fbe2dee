"""PromptSRC (spec-new-methods B4) on the tiny ViT: its reduction to IVLP, the frozen teacher, the
self-regulating terms, and the server's Gaussian prompt aggregation (evaluation state only, never
a client's download), including the regression against FLiP's shrinking partial sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedmoap.config.sections import TrainArgs
from fedmoap.errors import FedmoapError
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from fedmoap.methods.promptsrc import IMAGENET_TEMPLATES, gpa_weight
from tests.worlds import first_batch, tiny_client, tiny_federation

SMALL = {"n_ctx": 2, "ctx_init": None, "vision_tokens": 2, "vision_depth": 2, "text_depth": 2}
OFF = {"text_weight": 0.0, "image_weight": 0.0, "logit_weight": 0.0, "gpa": False}


def test_with_every_weight_zero_and_no_gpa_it_is_ivlp(world):
    b = first_batch(world, 4)
    src = tiny_client(world, "promptsrc", batch_size=4, **SMALL, **OFF)
    ivlp = tiny_client(world, "fedvpt", batch_size=4, **SMALL)
    assert all(torch.equal(src.global_init()[k], v) for k, v in ivlp.global_init().items())
    assert set(src.global_init()) == set(ivlp.global_init()) == set(src.upload())
    loss_src, loss_ivlp = src.training_step(b), ivlp.training_step(b)
    assert torch.equal(loss_src, loss_ivlp)
    loss_src.backward(), loss_ivlp.backward()
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(src.parameters(), ivlp.parameters()))


def test_teacher_is_the_mean_of_the_sixty_template_features(world):
    src = tiny_client(world, "promptsrc", **SMALL)
    assert len(IMAGENET_TEMPLATES) == 60 and len(set(IMAGENET_TEMPLATES)) == 60
    bb, name = src.backbone, src.classnames[3]
    feats = bb.encode_prompts(bb.prepare_prompts([t.format(name) for t in IMAGENET_TEMPLATES], 0)).float()
    assert torch.allclose(src.teacher[3], F.normalize(feats.mean(0), dim=-1), atol=1e-6)
    src.set_classnames(src.classnames[:2])
    assert src.teacher.shape[0] == 2


def test_each_term_is_zero_at_the_frozen_model_and_positive_away_from_it(world):
    b = first_batch(world, 4)
    src = tiny_client(world, "promptsrc", batch_size=4, **SMALL)
    ce = tiny_client(world, "promptsrc", batch_size=4, **SMALL, **OFF).training_step(b)
    f, f0 = src.image_pair(b)
    assert (f - f0).abs().mean() > 0  # the vision prompts move the image feature
    for term in ("text_weight", "image_weight", "logit_weight"):
        only = {**OFF, term: 1.0}
        assert tiny_client(world, "promptsrc", batch_size=4, **SMALL, **only).training_step(b) > ce
    # the logits term: 0 when the student's logits are the teacher's (text-only, text = teacher)
    text_only = tiny_client(
        world, "promptsrc", batch_size=4, **{**SMALL, "vision_depth": 0}, **{**OFF, "logit_weight": 1.0}
    )
    text_only.text_features = lambda: text_only.teacher
    at_teacher = F.cross_entropy(text_only.logits(b, text_only.teacher), b["label"])
    assert torch.allclose(text_only.training_step(b), at_teacher, atol=1e-6)


def test_text_only_variant_reads_cached_features_and_uploads_no_vision_prompt(world):
    src = registry()["promptsrc"](**{**SMALL, "vision_depth": 0})
    assert src.required_inputs() == frozenset({"features"})
    client = tiny_client(world, "promptsrc", **{**SMALL, "vision_depth": 0})
    assert set(client.upload()) == {"prompt", "deep_text"} and not hasattr(client, "vision")
    b = first_batch(world, 4)
    loss = client.training_step(b)
    loss.backward()
    assert client.ctx.grad.abs().sum() > 0
    assert src.problems() == [] and registry()["fedvpt"](vision_depth=0).problems()


def server(world, rounds: int | None = None, **knobs):
    backbone, names, data = world
    method = registry()["promptsrc"](**SMALL, **knobs)
    run = RunContext(0, 2, TrainArgs(local_epochs=1, batch_size=4), False, rounds)
    module = method.build_client(backbone, names, run)
    return method.build_server(module.global_init(), run)


def test_gpa_is_evaluation_state_and_a_narrow_gaussian_returns_its_round(world):
    srv = server(world, gpa_mean=3.0, gpa_std=1e-3)
    thetas = {}
    for t in range(1, 6):
        upload = {k: v + t for k, v in srv.global_state.items()}
        srv.aggregate(t, {0: upload}, {0: 1})
        thetas[t] = {k: v.clone() for k, v in srv.global_state.items()}
        assert all(torch.equal(srv.payload(0, t + 1)[k], v) for k, v in thetas[t].items())  # downloads: FedAvg
        expected = thetas[t] if t < 3 else thetas[3]  # before the peak: sum g < 1e-6, the latest model
        assert all(torch.equal(srv.eval_payload(0)[k], v) for k, v in expected.items()), t


def test_gpa_weights_rounds_like_the_paper_and_does_not_shrink_the_model(world):
    srv = server(world, gpa_mean=2.0, gpa_std=1.0)
    start = {k: v.clone() for k, v in srv.global_state.items()}
    for t in (1, 2, 3):
        srv.aggregate(t, {0: {k: v * (t + 1) for k, v in start.items()}}, {0: 1})
    g = [gpa_weight(t, 2.0, 1.0) for t in (1, 2, 3)]
    for k, v in start.items():
        expected = sum(w * (t + 1) for w, t in zip(g, (1, 2, 3))) / sum(g) * v.double()
        assert torch.allclose(srv.eval_payload(0)[k].double(), expected, atol=1e-6)
    restored = server(world, gpa_mean=2.0, gpa_std=1.0)
    restored.load_state_dict(srv.state_dict())
    assert all(torch.equal(restored.eval_payload(0)[k], v) for k, v in srv.eval_payload(0).items())


def test_before_the_peak_the_evaluated_model_is_not_shrunk_towards_zero(world):
    """FLiP's port loads sum_{tau <= t} g_tau theta_tau (g normalised over all R rounds) as the
    model: before round ~gpa_mean that is a small multiple of theta. Here a model that stays theta
    is evaluated as theta, and the download is theta."""
    srv = server(world, gpa_mean=15.0, gpa_std=5.0)
    theta = {k: v + 1 for k, v in srv.global_state.items()}
    for t in (1, 2, 3):
        srv.aggregate(t, {0: theta}, {0: 1})
    flip = sum(gpa_weight(t, 15.0, 5.0) for t in (1, 2, 3)) / sum(gpa_weight(t, 15.0, 5.0) for t in range(51))
    assert flip < 0.05 and sum(srv.weights().values()) > 1e-6
    for k, v in theta.items():
        assert torch.allclose(srv.eval_payload(0)[k], v, atol=1e-6) and torch.equal(srv.payload(0, 4)[k], v)


@pytest.mark.parametrize("rounds", [2, 30])
def test_gpa_peaks_at_three_quarters_of_the_run_whatever_its_length(world, rounds):
    """With gpa_mean null the Gaussian sits at 0.75 x fed.rounds: a 2-round run mixes both of its
    rounds, a 30-round run weighs its rounds around 22.5 most (not the paper's absolute 15)."""
    srv = server(world, rounds=rounds)
    for t in range(1, rounds + 1):
        srv.aggregate(t, {0: {k: v + t for k, v in srv.global_state.items()}}, {0: 1})
    g = srv.weights()
    assert sorted(g) == list(range(1, rounds + 1))
    peak = 0.75 * rounds
    assert all(g[t] == pytest.approx(gpa_weight(t, peak, 1.0)) for t in g)
    assert max(g, key=g.get) in (int(peak), int(peak) + 1)
    if rounds == 2:
        assert g[1] == pytest.approx(g[2]) and g[1] > 0.3
    else:
        assert g[15] < 1e-10 < g[22] and g[23] / sum(g.values()) > 0.3


def test_a_gpa_peak_outside_the_run_is_refused():
    from fedmoap.config.sections import FedArgs
    from fedmoap.federation.config import RunConfig
    from fedmoap.run.validate import validate

    with pytest.raises(FedmoapError, match=r"method.gpa_mean 15 is not a round of this run \(1..fed.rounds = 10\)"):
        validate(RunConfig(method=registry()["promptsrc"](gpa_mean=15.0), fed=FedArgs(rounds=10)))
    validate(RunConfig(method=registry()["promptsrc"](gpa_mean=15.0), fed=FedArgs(rounds=30)))


def test_bad_knobs_are_named():
    problems = registry()["promptsrc"](gpa_std=0.0, text_weight=-1.0, teacher_templates=["no slot"]).problems()
    assert any("method.gpa_std" in p for p in problems)
    assert any("method.text_weight" in p for p in problems)
    assert any("method.teacher_templates" in p for p in problems)


@pytest.mark.parametrize("depth", [0, 2])
def test_runs_a_round_in_a_federation(world, tmp_path, depth):
    method = registry()["promptsrc"](**{**SMALL, "vision_depth": depth}, gpa_mean=1.0)
    fed = tiny_federation(world, method, tmp_path, rounds=1, keep=False)
    srv = fed.server
    record = fed.run_round(1, progress=False)
    assert record["mean_acc"] >= 0 and srv.weights()[1] > 0
    assert all(torch.equal(srv.eval_payload(0)[k], v) for k, v in srv.global_state.items())  # one round
