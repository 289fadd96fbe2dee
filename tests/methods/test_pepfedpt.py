"""PEP-FedPT (reconstruction, spec §2.8) and its VPT baselines: CCMP off is FedAvg-VPT exactly,
mixing weights are a distribution with the right limits, the test path never reads a label,
prototypes are the pooled class means, nothing trainable is kept per client, gradients reach
every prompt and the head, the set-up statistics survive a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedmoap.config.sections import TrainArgs
from fedmoap.federation.rounds import Federation
from fedmoap.methods.base import RunContext
from fedmoap.methods.pepfedpt import FedAvgVPT, LocalVPT, PEPFedPT
from tests.worlds import fit_smoke, results, tiny_federation, tiny_world

SMALL = dict(shared_tokens=2)
PEP = dict(shared_tokens=2, class_tokens=1)
N = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("cache"), N, alpha=0.3)


def federation(world, tmp_path, cls=PEPFedPT, participation=0.5, keep=None, **knobs) -> Federation:
    backbone, classnames, data = world
    method = cls(**{**(PEP if cls is PEPFedPT else SMALL), **knobs})
    return tiny_federation(world, method, tmp_path / "clients", participation=participation, rounds=4, keep=keep)


def fit(tmp_path: Path, name: str, *args: str, rounds: int = 2) -> dict:
    return results(fit_smoke(tmp_path / name, "--fed.rounds", str(rounds), *args, "--method.shared_tokens", "2"))


class NoLabel(dict):
    def __getitem__(self, key):
        assert key != "label", "the label was read"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "label", "the label was read"
        return super().get(key, default)


def test_ccmp_off_is_fedavg_vpt_exactly(tmp_path):
    ours = fit(tmp_path, "pep", "--method", "pepfedpt", "--method.ccmp", "false")
    ref = fit(tmp_path, "vpt", "--method", "fedavg_vpt")
    assert [r["clients"] for r in ours["rounds"]] == [r["clients"] for r in ref["rounds"]]
    assert [r["bytes_up"] for r in ours["rounds"]] == [r["bytes_up"] for r in ref["rounds"]]
    assert PEPFedPT(ccmp=False).required_inputs() == {"pixels"}
    assert PEPFedPT().required_inputs() == {"pixels", "features"}


def test_setup_statistics_survive_a_resume(tmp_path):
    args = ["--method", "pepfedpt", "--method.class_tokens", "1"]
    whole = fit(tmp_path, "whole", *args, rounds=3)
    fit(tmp_path, "parts", *args, rounds=1)
    parts = fit(tmp_path, "parts", *args, rounds=3)  # extends the finished run
    assert [r["clients"] for r in whole["rounds"]] == [r["clients"] for r in parts["rounds"]]
    assert whole["rounds"][0]["bytes_up"] > whole["rounds"][1]["bytes_up"]  # the set-up pass


def test_mixing_weights(world):
    backbone, classnames, data = world
    fed = federation(world, Path("/nonexistent"), eps=0.0)
    module, c = fed.module, len(classnames)
    module.load_client(0, None)
    z = torch.nn.functional.normalize(torch.randn(5, backbone.embed_dim), dim=-1)
    module.prototypes.copy_(torch.randn(c, backbone.embed_dim))
    module.prior_counts = torch.rand(c) + 0.1
    w = module.mixing_weights(z)
    assert w.shape == (5, c) and torch.allclose(w.sum(-1), torch.ones(5))
    module.prior_counts = torch.nn.functional.one_hot(torch.tensor(3), c).float()  # one-hot prior
    assert torch.equal(module.mixing_weights(z), torch.nn.functional.one_hot(torch.full((5,), 3), c).float())
    module.prototypes.copy_(torch.randn(1, backbone.embed_dim).expand(c, -1))  # identical prototypes
    module.prior_counts = torch.ones(c)
    torch.testing.assert_close(module.mixing_weights(z), torch.full((5, c), 1 / c))
    fed.method.weights = "topk"
    module.prototypes.copy_(torch.randn(c, backbone.embed_dim))
    w = module.mixing_weights(z)
    assert ((w > 0).sum(-1) == 3).all() and torch.allclose(w.sum(-1), torch.ones(5))
    fed.method.weights = "hard"
    assert ((module.mixing_weights(z) == 1).sum(-1) == 1).all()


def test_test_path_reads_no_label_and_train_test_weights_agree(world, tmp_path):
    fed = federation(world, tmp_path, participation=1.0)
    fed.run_round(1, progress=False)
    module = fed.module
    module.load_client(1, fed.store.get(1))
    module.prepare_eval(fed.server.eval_payload(1))
    module.begin_eval()
    batch = next(iter(fed.data.plain_train_batches(1, 16)))
    label = batch.pop("label")
    logits = module.predict(NoLabel(batch))
    assert logits.shape == (len(label), len(world[1]))
    module.train()
    seen = []
    original = module.mixing_weights
    module.mixing_weights = lambda z: seen.append(original(z)) or seen[-1]
    module.training_step({**batch, "label": label})
    module.eval()
    module.predict(NoLabel(batch))
    assert torch.equal(seen[0], seen[1])


def test_prototypes_are_the_pooled_class_means_and_priors_the_label_histograms(world, tmp_path):
    backbone, classnames, data = world
    fed = federation(world, tmp_path)
    fed.run_round(1, progress=False)
    feats, labels = [], []
    for cid in range(N):
        pos = data.train_pos[cid]
        feats.append(data.train.features[0, pos])
        labels.append(data.train.labels[pos])
        counts = torch.bincount(data.train_labels(cid), minlength=len(classnames)).float()
        assert torch.equal(fed.store.get(cid)["extra"]["prior_counts"], counts)
    feats, labels = torch.cat(feats).double(), torch.cat(labels)
    proto = fed.server.state_dict()["global"]["prototypes"]
    for c in range(len(classnames)):
        if (labels == c).any():
            expected = torch.nn.functional.normalize(feats, dim=-1)[labels == c].mean(0)
            torch.testing.assert_close(proto[c].double(), expected, atol=1e-6, rtol=1e-5)
        else:
            assert not proto[c].any()


def test_nothing_trainable_is_kept_per_client(world, tmp_path):
    fed = federation(world, tmp_path, participation=1.0)
    fed.run_round(1, progress=False)
    for cid in range(N):
        state = fed.store.get(cid)
        assert state["params"] == {} and set(state["extra"]) == {"prior_counts"} and state["optim"] is None
    assert set(fed.module.upload()) == {"shared", "class_prompts", "head_weight", "head_bias"}


def test_gradients_reach_every_prompt_and_the_head(world, tmp_path):
    fed = federation(world, tmp_path, participation=1.0, ccmp_deep=True)
    fed.run_round(1, progress=False)
    module, data = fed.module, fed.data
    module.load_client(0, fed.store.get(0))
    module.receive(fed.server.payload(0, 2))
    module.train()
    batch = next(iter(data.train_batches(0, 2, 64)(0)))
    module.training_step(batch).backward()
    w = module.mixing_weights(torch.nn.functional.normalize(batch["features"], dim=-1))
    for name in ("shared", "head.weight", "head.bias"):
        assert dict(module.named_parameters())[name].grad.abs().sum() > 0, name
    grad = module.class_prompts.grad  # L C n W
    used = w.sum(0) > 1e-4
    assert (grad.abs().sum((0, 2, 3))[used] > 0).all()
    assert module.class_prompts.shape[0] == module.backbone.vision_layers - module.ccmp_block


def test_usage_aggregation_takes_a_class_prompt_from_its_only_user(world, tmp_path):
    fed = federation(world, tmp_path, participation=1.0, class_prompt_agg="usage")
    c = len(world[1])
    uploads = {}
    for cid in range(2):
        up = {k: torch.full_like(v, float(cid + 1)) for k, v in fed.server.payload(cid, 1).items() if k != "prototypes"}
        up["usage"] = torch.zeros(c)
        up["usage"][cid] = 5.0
        uploads[cid] = up
    fed.server.aggregate(1, uploads, {0: 10, 1: 30})
    got = fed.server.global_state["class_prompts"]
    untouched = uploads[0]["class_prompts"][:, 2:] * 0 + fed.server.init["class_prompts"][:, 2:]
    assert (got[:, 0] == 1).all() and (got[:, 1] == 2).all() and (got[:, 2:] == untouched).all()
    shared = fed.server.global_state["shared"]
    torch.testing.assert_close(shared, torch.full_like(got[0, 0, :1], 1.75).expand_as(shared))


def test_prompted_prototypes_are_refreshed_after_each_round(world, tmp_path):
    fed = federation(world, tmp_path, proto_feature="prompted")
    assert fed.method.required_inputs() == {"pixels"}
    fed.run_round(1, progress=False)
    first = fed.server.state_dict()["global"]["prototypes"].clone()
    fed.run_round(2, progress=False)
    assert not torch.equal(first, fed.server.state_dict()["global"]["prototypes"])


def test_local_vpt_trains_everyone_alone(world, tmp_path):
    fed = federation(world, tmp_path, cls=LocalVPT, participation=0.25)
    record = fed.run_round(1, progress=False)
    assert record["participants"] == list(range(N)) and record["bytes_up"] == 0
    states = [fed.store.get(c)["params"] for c in range(N)]
    assert not torch.equal(states[0]["shared"], states[1]["shared"])
    assert set(states[0]) == {"shared", "head.weight", "head.bias"}


def test_ccmp_layer_and_head_init(world):
    assert [PEPFedPT().ccmp_block(12), PEPFedPT().ccmp_block(2)] == [6, 1]  # block 7 of 12, 1-based
    backbone, classnames, _ = world
    run = RunContext(0, N, TrainArgs(), False)
    module = FedAvgVPT(head_init="text", **SMALL).build_client(backbone, classnames, run)
    module.load_client(0, None)
    image = torch.nn.functional.normalize(torch.randn(3, backbone.embed_dim), dim=-1)
    text = torch.nn.functional.normalize(
        backbone.encode_prompts(backbone.prepare_prompts([f"a photo of a {c}." for c in classnames], 0)), dim=-1
    )
    with torch.no_grad():
        torch.testing.assert_close(
            module.head(image * backbone.embed_dim**0.5), backbone.logit_scale * image @ text.t(), atol=1e-4, rtol=1e-4
        )
    assert any("ccmp_layer" in p for p in PEPFedPT(ccmp_layer=1.5).problems())
