"""Regression tests for the correctness review (shared/notes/review-2026-11-correctness.md): one
per defect that a CPU can show, named after it."""
from __future__ import annotations

import fcntl
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from fedmoap.run.cli import main
from fedmoap.federation.config import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.distributed import Comm
from fedmoap.errors import FedmoapError
from fedmoap.run.fit import preempted
from fedmoap.io import file_lock
from fedmoap.federation.rounds import Schedule

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
PIXEL = [[[10, 20, 30]] * 4] * 4


def saved(root: Path, train: dict, test: dict, features: Features) -> str:
    DatasetDict(train=Dataset.from_dict(train, features=features),
                test=Dataset.from_dict(test, features=features)).save_to_disk(str(root))
    return str(root)


def fit(tmp_path: Path, *extra: str, run: str = "run") -> dict:
    assert main(["fit", "--config", str(SMOKE), *extra, "--run_dir", str(tmp_path / run),
                 "--data.feature_cache", str(tmp_path / "cache"), "--progress", "false"]) == 0
    return json.loads((tmp_path / run / "results.json").read_text())


def test_d3_test_sets_follow_the_k_shot_training_mix():
    source = load_source(DataArgs(source="synthetic"))
    for follows in ("train", "partition"):
        args = DataArgs(source="synthetic", num_clients=4, alpha=0.3, shots=2, test_follows=follows,
                        max_test_per_client=None)
        split = make_split(args, source, seed=0)
        for train, test in zip(split.train, split.test):
            counts = np.bincount(source.train_labels[train], minlength=10)
            tests = np.bincount(source.test_labels[test], minlength=10)
            if follows == "train":  # a class the client does not train on is not in its test set
                assert not tests[counts == 0].any()
                share = counts / counts.sum()
                assert np.abs(tests / tests.sum() - share).max() < 0.25
    # the old rule differs on this split: some client is tested on classes it never trained
    old = make_split(DataArgs(source="synthetic", num_clients=4, alpha=0.3, shots=2,
                              test_follows="partition", max_test_per_client=None), source, seed=0)
    new = make_split(DataArgs(source="synthetic", num_clients=4, alpha=0.3, shots=2,
                              max_test_per_client=None), source, seed=0)
    assert any(not np.array_equal(a, b) for a, b in zip(old.test, new.test))


def test_d4_domain_codes_agree_between_train_and_test(tmp_path):
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"]), "domain": Value("string")})
    train = {"image": [PIXEL] * 8, "label": [0, 1] * 4, "domain": ["clipart"] * 4 + ["painting"] * 4}
    test = {"image": [PIXEL] * 6, "label": [0, 1] * 3, "domain": ["clipart", "clipart", "infograph",
                                                                    "infograph", "painting", "painting"]}
    source = load_source(DataArgs(source=saved(tmp_path / "d", train, test, features), domain_column="domain"))
    names_train = np.array(train["domain"])
    names_test = np.array(test["domain"])
    for code in np.unique(source.train_domains):
        assert set(names_train[source.train_domains == code]) == set(names_test[source.test_domains == code])
    features2 = Features({"image": Image(), "label": ClassLabel(names=["a", "b"]), "domain": Value("string")})
    test2 = {"image": [PIXEL] * 2, "label": [0, 1], "domain": ["clipart"] * 2}
    with pytest.raises(FedmoapError, match="painting"):  # a training domain without test data
        load_source(DataArgs(source=saved(tmp_path / "e", train, test2, features2), domain_column="domain"))


def test_d10_results_are_strict_json_and_a_client_without_test_data_is_refused(tmp_path):
    results = fit(tmp_path, "--fed.rounds", "1")
    text = (tmp_path / "run" / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    for c in results["rounds"][0]["clients"].values():  # D21: acc is correct / n, in float64
        assert c["acc"] == c["correct"] / c["n"]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c", "d"])})
    train = {"image": [PIXEL] * 8, "label": [0, 1, 2, 3] * 2}
    test = {"image": [PIXEL] * 4, "label": [0, 0, 1, 1]}  # classes 2 and 3 have no test images
    args = DataArgs(source=saved(tmp_path / "d", train, test, features), num_clients=2,
                    partition="pathological", shots=None)
    source = load_source(args)
    with pytest.raises(FedmoapError, match="no test samples"):
        for seed in range(20):  # some seed gives one client classes {2, 3}
            make_split(args, source, seed)


def test_d14_coop_trains_every_client_every_round(tmp_path):
    results = fit(tmp_path, "--method", "coop", "--fed.rounds", "2", "--fed.participation", "0.5")
    assert all(r["participants"] == list(range(6)) for r in results["rounds"])
    once = fit(tmp_path, "--method", "coop", "--method.schedule", "once", "--method.epochs", "3",
               "--fed.rounds", "2", run="once")
    assert [r["participants"] for r in once["rounds"]] == [list(range(6)), []]
    assert once["rounds"][0]["clients"] == once["rounds"][1]["clients"]


def test_d17_string_labels_follow_the_class_names(tmp_path):
    features = Features({"image": Image(), "label": Value("string")})
    train = {"image": [PIXEL] * 4, "label": ["dog", "cat", "dog", "bird"]}
    args = DataArgs(source=saved(tmp_path / "s", train, train, features), classnames=["cat", "dog", "bird"])
    source = load_source(args)
    assert source.classnames == ["cat", "dog", "bird"] and source.train_labels.tolist() == [1, 0, 1, 2]
    source = load_source(DataArgs(source=str(tmp_path / "s")))  # no names: the sorted strings
    assert source.classnames == ["bird", "cat", "dog"] and source.train_labels.tolist() == [2, 1, 2, 0]


def test_d23_participants_round_half_up():
    assert len(Schedule(0, 7, 0.5).participants(1)) == 4
    assert len(Schedule(0, 5, 0.5).participants(1)) == 3
    assert len(Schedule(0, 30, 0.25).participants(1)) == 8
    assert len(Schedule(0, 10, 0.01).participants(1)) == 1


def test_exact_participant_count_draws_that_many_every_round(tmp_path, capsys):
    schedule = Schedule(0, 30, count=7, held_out=frozenset({0, 1}))
    for t in range(1, 6):
        drawn = schedule.participants(t)
        assert len(drawn) == 7 and not {0, 1} & set(drawn)
    assert main(["fit", "--fed.participants", "3", "--fed.participation", "0.5",
                 "--run_dir", str(tmp_path / "r")]) == 2
    assert "fed.participants and fed.participation" in capsys.readouterr().err
    assert main(["fit", "--fed.participants", "6", "--run_dir", str(tmp_path / "r")]) == 2
    assert "fed.participants must be in [1, data.num_clients = 5]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_d20_lock_falls_back_to_lockf(tmp_path, monkeypatch):
    def no_flock(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with file_lock(tmp_path / "x.pt"):
        assert (tmp_path / "x.lock").exists()


class TwoRanks(Comm):
    """Rank 1 of two, where only rank 0 saw SIGUSR1 (the collective returns both ranks' values)."""

    def __init__(self):
        super().__init__(rank=1, world_size=2)

    def gather(self, obj):
        return [int(signal.SIGUSR1), obj]


def test_d11_only_rank_0_requeues(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    message = preempted(TwoRanks(), None, 3)
    assert f"signal {int(signal.SIGUSR1)}" in message and "rank 0 requeues" in message
    assert "not under SLURM" in preempted(Comm(), signal.SIGUSR1, 3)


def test_d12_a_preempted_encode_keeps_what_it_encoded(tmp_path, monkeypatch):
    import fedmoap.inputs.features as features
    from fedmoap.backbones.openclip import OpenCLIPBackbone
    from fedmoap.data.synthetic import make_synthetic
    from fedmoap.preemption import Preempted

    monkeypatch.setattr(features, "FLUSH_ROWS", 4)
    calls = []
    cache = features.FeatureCache(tmp_path, OpenCLIPBackbone.build("fedmoap-tiny-vit", None),
                                  stop=lambda: bool(calls.append(1)) or len(calls) > 1)
    ds = make_synthetic(num_classes=2, train_per_class=5, test_per_class=1)["train"]
    with pytest.raises(Preempted):
        cache.get(ds, "d", np.arange(10), "image")
    again = features.FeatureCache(tmp_path, cache.backbone)
    again.get(ds, "d", np.arange(10), "image")
    assert again.computed == 6  # the first 4 rows were on disk


def test_d13_a_fresh_run_clears_an_aborted_starts_tensorboard(tmp_path):
    stale = tmp_path / "run" / "tensorboard" / "version_0" / "events.out.tfevents.0.stale"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old curves")
    fit(tmp_path, "--fed.rounds", "1")
    assert not stale.exists() and list((tmp_path / "run" / "tensorboard").rglob("events.*"))


def test_d15_the_tags_resize_mode_and_interpolation_are_used():
    from torchvision import transforms as T

    from fedmoap.backbones.openclip import OpenCLIPBackbone

    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None)
    backbone.resize_mode, backbone.interpolation = "squash", "bilinear"
    steps = backbone.image_transform(train=False).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    assert tuple(resize.size) == (32, 32) and resize.interpolation == T.InterpolationMode.BILINEAR
    backbone.resize_mode = "longest"
    assert "fill=0" in repr(backbone.image_transform(train=False))


def test_d16_resuming_with_other_weights_is_refused(tmp_path, capsys):
    from fedmoap.backbones.openclip import OpenCLIPBackbone

    weights = tmp_path / "tiny.pt"
    torch.save(OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0).model.state_dict(), weights)
    args = ["--model.pretrained", str(weights), "--fed.rounds"]
    fit(tmp_path, *args, "1")
    torch.save(OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=5).model.state_dict(), weights)
    rc = main(["fit", "--config", str(SMOKE), *args, "2", "--run_dir", str(tmp_path / "run"),
               "--data.feature_cache", str(tmp_path / "cache"), "--progress", "false"])
    assert rc == 2 and "other backbone weights" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["pfedmoap", "fedvpt"])
def test_d1_smoke_config_runs_on_cuda(tmp_path, method):
    results = fit(tmp_path, "--method", method, "--fed.rounds", "2", "--fabric.accelerator", "gpu",
                  run=method)
    assert all(math.isfinite(r["mean_acc"]) for r in results["rounds"])


def test_d5_a_tokenizer_without_start_token_is_refused():
    from fedmoap.backbones.openclip import OpenCLIPBackbone

    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    clip_tokenizer = backbone.tokenizer
    # The CLIP tokenizer with its start token stripped: mT5's layout (no BOS, end-of-text pooling).
    backbone.tokenizer = lambda texts: torch.cat(
        [clip_tokenizer(texts)[:, 1:], torch.zeros(len(texts), 1, dtype=torch.long)], 1)
    with pytest.raises(FedmoapError, match="start token"):
        backbone.prepare_prompts(["cat.", "dog."], 4)
    with pytest.raises(FedmoapError, match="start token"):
        backbone.embed_tokens("a photo of a")
    backbone.tokenizer = clip_tokenizer
    backbone._start_checked = False
    slots = backbone.prepare_prompts(["cat.", "dog."], 4)
    assert slots.prefix.device == backbone.text.token_embedding.weight.device
    assert backbone.embed_tokens("a photo of a").shape[0] == 4
