"""Evaluation modes (``eval.modes``): every mode's results.json keys with per-client numbers, the
stored base/novel class split and held-out clients, training on base classes only, the separate
novel label space, held-out clients that never train and whose adaptation keeps nothing, the
harmonic means, TensorBoard scalars and hparams, and ``fedmoap report`` over seeds.

One smoke run with every mode (module fixture) plus small in-process federations; the report is
checked on hand-written run directories with known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.digest import config_digest
from fedmoap.config.sections import DataArgs, EvalArgs, TrainArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.federation.config import RunConfig, config_dict
from fedmoap.federation.evaluation import ModeEvaluator, apply_class_order, class_split, complete_split
from fedmoap.federation.results import base2novel_entry, hmean
from fedmoap.federation.rounds import Federation
from fedmoap.federation.schedule import Schedule
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.federated_data import FederatedData, Inputs, gather_inputs
from fedmoap.methods import registry
from fedmoap.methods.base import RunContext
from fedmoap.run.cli import main
from fedmoap.run.rundir import check_run_dir
from tests.worlds import fit_smoke, tiny_federation

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
ALL = "[local,global,neighbor,base2novel,unseen_clients]"
METHODS = registry()


# ----------------------------------------------------------------------------- a run, every mode
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """pFedMoAP on the smoke config (6 clients, half of the 5 training clients per round), 2
    rounds, every mode; returns (run_dir, results, split, source)."""
    run_dir = fit_smoke(
        tmp_path_factory.mktemp("modes") / "run",
        *("--eval.modes", ALL, "--fed.rounds", "2", "--train.local_epochs", "1", "--eval.adaptation_epochs", "2"),
        threads=None,
    )
    results = json.loads((run_dir / "results.json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    source = load_source(DataArgs(source="synthetic"))
    return run_dir, results, split, source


def test_every_mode_has_per_client_numbers(run):
    _, results, split, _ = run
    held = split["unseen_clients"]
    trained = {str(c) for c in range(6) if c not in held}
    assert results["eval_modes"] == ["local", "global", "neighbor", "base2novel", "unseen_clients"]
    for r in results["rounds"]:
        assert set(r["clients"]) == trained  # local: the training clients only
        for mode in ("global", "neighbor"):
            e = r[mode]
            assert set(e["clients"]) == trained
            accs = [v["acc"] for v in e["clients"].values()]
            assert all(0 <= a <= 1 for a in accs) and e["mean_acc"] == pytest.approx(np.mean(accs))
        b2n = r["base2novel"]
        assert set(b2n["clients"]) == trained
        for cid, v in b2n["clients"].items():
            assert set(v) >= {"local", "base", "novel", "hm", "hm3"}
            assert v["local"] == r["clients"][cid]["acc"]  # local = the run's own local accuracy
            assert v["base_n"] == len(split["eval_sets"]["base"])
            assert v["novel_n"] == len(split["eval_sets"]["novel"])
            assert v["hm"] == pytest.approx(hmean(v["base"], v["novel"]))
            assert v["hm3"] == pytest.approx(hmean(v["local"], v["base"], v["novel"]))
        for k in ("local", "base", "novel", "hm", "hm3"):
            assert b2n["mean"][k] == pytest.approx(np.mean([v[k] for v in b2n["clients"].values()]))
        unseen = r["unseen_clients"]
        assert unseen["held_out"] == held and unseen["adaptation_epochs"] == 2
        for part in ("no_adaptation", "adapted"):
            assert set(unseen[part]["clients"]) == {str(c) for c in held}
    neighbor_n = {c: v["n"] for c, v in results["rounds"][-1]["neighbor"]["clients"].items()}
    own_n = {c: v["n"] for c, v in results["rounds"][-1]["clients"].items()}
    assert all(neighbor_n[c] == sum(own_n.values()) - own_n[c] for c in own_n)  # the others' test sets
    s = results["summary"]
    assert s["global"]["final_mean_acc"] == results["rounds"][-1]["global"]["mean_acc"]
    assert s["base2novel"]["final"] == results["rounds"][-1]["base2novel"]["mean"]
    assert set(s["unseen_clients"]) == {"no_adaptation", "adapted"}


def test_class_split_is_stored_and_training_sees_only_base_classes(run):
    _, _, split, source = run
    classes = split["classes"]
    assert classes["names"] == source.classnames
    assert classes["base"] == [0, 1, 2, 3, 4] and classes["novel"] == [5, 6, 7, 8, 9]  # ceil(10/2)
    for c in split["clients"]:
        assert set(source.train_labels[c["train"]]) <= set(classes["base"])
        assert set(source.test_labels[c["test"]]) <= set(classes["base"])  # local = base classes
    assert set(source.test_labels[split["eval_sets"]["base"]]) == set(classes["base"])
    assert set(source.test_labels[split["eval_sets"]["novel"]]) == set(classes["novel"])
    assert len(split["eval_sets"]["global"]) == len(source.test_labels)  # the whole test set


def test_unseen_clients_never_train_and_are_never_stored(run):
    run_dir, results, split, _ = run
    held = split["unseen_clients"]
    assert len(held) == 1  # 0.2 x 6 rounded half up
    for r in results["rounds"]:
        assert not set(held) & set(r["participants"])
        assert r["participants"]  # the others do train
    for cid in held:
        assert not (run_dir / "clients" / str(cid)).exists()


def test_tensorboard_scalars_and_hparams(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, results, split, _ = run
    scalars = EventAccumulator(str(run_dir / "tensorboard" / "version_0")).Reload().Tags()["scalars"]
    cid = next(iter(results["rounds"][-1]["clients"]))
    held = split["unseen_clients"][0]
    for tag in [
        "mean/acc",
        f"client/{cid}/acc",
        "comm/bytes_up",
        "global/mean/acc",
        f"global/client/{cid}/acc",
        f"neighbor/client/{cid}/acc",
        f"base2novel/client/{cid}/novel",
        "base2novel/mean/hm",
        "base2novel/mean/hm3",
        f"unseen_clients/client/{held}/acc",
        f"unseen_clients/client/{held}/adapted_acc",
        "unseen_clients/mean/adapted_acc",
    ]:
        assert tag in scalars, tag
    hp = EventAccumulator(str(run_dir / "tensorboard" / "hparams")).Reload()
    content = hp.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in content
    assert "_hparams_/experiment" not in content  # so a directory of runs gets the union of settings
    final = hp.Scalars("summary/final_mean_acc")
    assert final[-1].value == pytest.approx(results["summary"]["final_mean_acc"], rel=1e-6)
    assert final[-1].step == 2
    assert "summary/base2novel_final_hm" in hp.Tags()["scalars"]


def test_report_reads_a_real_run(run, capsys):
    run_dir = run[0]
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "b2n.hm3" in out and "unseen.adapted" in out and "synthetic" in out


# ------------------------------------------------------------------------- in-process federations
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny ViT and the synthetic dataset over 5 clients (client 4 held out), base-to-novel
    and global pooled test sets, features only."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    args = DataArgs(source="synthetic", num_clients=5, alpha=0.5, shots=4, max_test_per_client=12)
    source = load_source(args)
    cfg = RunConfig(
        data=args, eval=EvalArgs(modes=["local", "global", "base2novel", "unseen_clients"], max_test_images=40)
    )
    classes = class_split(source.classnames, 0.5)
    split = complete_split(make_split(args, source, 0, classes.base), cfg, source, classes)
    data = gather_inputs(
        frozenset({"features"}),
        args,
        source,
        split,
        FeatureCache(tmp_path_factory.mktemp("cache"), backbone),
        None,
        None,
        seed=0,
    )
    apply_class_order(data, classes)
    return backbone, classes, split, data


def federation(world, name: str, store_root: Path, **knobs) -> tuple[Federation, ModeEvaluator]:
    backbone, classes, split, data = world
    method = METHODS[name](**knobs)
    held = split.extra["unseen_clients"]
    fed = tiny_federation(
        world,
        method,
        store_root,
        keep=True,
        classes=classes,
        held_out=held,
        eval_args=EvalArgs(modes=["global", "base2novel", "unseen_clients"], adaptation_epochs=2),
    )
    return fed, fed.modes


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["promptfl", "coop"])
def test_adaptation_changes_no_stored_state(world, tmp_path, name):
    fed, modes = federation(world, name, tmp_path, n_ctx=4)
    record = fed.run_round(1, progress=False)
    held = fed.schedule.held_out
    assert not held & set(record["participants"]) and not any(c in fed.store for c in held)
    before_files = files(tmp_path)
    before_server = {k: v.clone() for k, v in fed.server.state_dict().get("global", {}).items()}
    local = {int(c): (v["correct"], v["n"]) for c, v in record["clients"].items()}
    again = modes(fed, 1, local)
    assert again == {k: record[k] for k in again}  # deterministic: the (seed, adapt, t, cid) stream
    assert files(tmp_path) == before_files
    assert all(torch.equal(v, fed.server.state_dict()["global"][k]) for k, v in before_server.items())
    assert not any(c in fed.store for c in held)
    # the adaptation did train: the module's prompt moved away from the never-trained client's
    cid = sorted(held)[0]
    fed.module.load_client(cid, None)
    fed.module.prepare_eval(fed.server.eval_payload(cid))
    start = fed.module.ctx.detach().clone()
    fed.adapt(cid, 1, 2)
    assert not torch.equal(start, fed.module.ctx.detach())


def test_participants_skip_held_out_clients():
    s = Schedule(3, 10, 0.5, held_out=frozenset({2, 7}))
    for t in range(1, 30):
        p = s.participants(t)
        assert len(p) == 4 and not {2, 7} & set(p)  # 0.5 x 8 training clients
    plain = Schedule(3, 10, 0.5)
    assert [plain.participants(t) for t in range(1, 6)] == [
        Schedule(3, 10, 0.5, held_out=frozenset()).participants(t) for t in range(1, 6)
    ]
    assert s.clients == [0, 1, 3, 4, 5, 6, 8, 9]


def test_novel_classes_use_the_novel_names_as_label_space():
    """Zero-shot on a constructed case: every test image's feature is exactly the zero-shot text
    feature of its own class, so with the right label space every prediction is right; a joint
    label space or base names for novel images would not give 1.0."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    names = ["red", "green", "blue", "yellow", "cyan", "magenta", "orange"]
    classes = class_split(names, 0.5)
    assert (classes.base, classes.novel) == ([0, 1, 2, 3], [4, 5, 6])
    method = METHODS["zeroshot"]()
    run = RunContext(0, 2, TrainArgs(), True)
    full = method.build_client(backbone, names, run)
    text = full.text_features().detach()  # (C, D) in label order
    labels = torch.arange(len(names)).repeat_interleave(2)  # two images per class
    test = Inputs(labels, features=text[labels][None])
    train = Inputs(labels[:0])
    base_rows = torch.nonzero(labels < 4).flatten()
    data = FederatedData(
        names,
        train,
        test,
        [torch.zeros(0, dtype=torch.long)] * 2,
        [base_rows[:4], base_rows[4:]],
        eval_pos={
            "base": base_rows,
            "novel": torch.nonzero(labels >= 4).flatten(),
            "global": torch.arange(len(labels)),
        },
    )
    fed = tiny_federation((backbone, names, data), method, Path("/nonexistent"), rounds=1, classes=classes)
    module = fed.module
    modes = ModeEvaluator(EvalArgs(modes=["global", "neighbor", "base2novel"]), classes, [], 1)
    out = modes(fed, 1, {0: (4, 4), 1: (4, 4)})
    for cid in ("0", "1"):
        v = out["base2novel"]["clients"][cid]
        assert (v["base"], v["novel"], v["hm"], v["hm3"]) == (1.0, 1.0, 1.0, 1.0)
        assert (v["base_n"], v["novel_n"]) == (8, 6)
        assert out["global"]["clients"][cid]["acc"] == 1.0 and out["global"]["clients"][cid]["n"] == 14
        assert out["neighbor"]["clients"][cid]["acc"] == 1.0
    assert module.classnames == classes.names_of(classes.base)  # restored after novel/global
    # the same novel images scored against the base names (a wrong label space) are all wrong
    module.begin_eval()
    wrong = module.predict({"features": text[4:]}).argmax(-1)
    assert not torch.equal(wrong, torch.arange(3))


def test_set_classnames_rebuilds_text_features(world):
    backbone, classes, _, _ = world
    run = RunContext(0, 5, TrainArgs(), True)
    method = METHODS["pfedmoap"](n_ctx=4, d_gating=32, heads=4, num_experts=2)
    novel = classes.names_of(classes.novel)
    a = method.build_client(backbone, classes.names_of(classes.base), run)
    a.reset(0)
    a.set_experts(torch.randn(2, 4, backbone.ctx_width) * 0.02)
    assert a.expert_text.shape[1] == len(classes.base)
    a.set_classnames(novel)
    b = method.build_client(backbone, novel, run)
    b.load_client(0, a.client_state())
    assert torch.allclose(a.text_features(), b.text_features())
    assert a.expert_text.shape[1] == len(novel) and a.num_classes == len(novel)


def test_harmonic_means():
    assert hmean(0.8, 0.4) == pytest.approx(2 * 0.8 * 0.4 / 1.2)
    assert hmean(0.9, 0.6, 0.3) == pytest.approx(3 / (1 / 0.9 + 1 / 0.6 + 1 / 0.3))
    assert hmean(0.5, 0.0) == 0.0 and math.isnan(hmean(0.5, float("nan")))
    e = base2novel_entry({0: (9, 10), 1: (5, 10)}, {0: (8, 10), 1: (6, 10)}, {0: (4, 10), 1: (2, 10)})
    assert e["clients"]["0"]["hm"] == pytest.approx(hmean(0.8, 0.4))
    assert e["clients"]["1"]["hm3"] == pytest.approx(hmean(0.5, 0.6, 0.2))
    assert e["mean"]["hm"] == pytest.approx((hmean(0.8, 0.4) + hmean(0.6, 0.2)) / 2)
    assert e["hm_of_means"]["hm"] == pytest.approx(hmean(0.7, 0.3))


def test_runs_made_before_the_eval_section_still_resume(tmp_path):
    cfg = config_dict(RunConfig())
    old = {k: v for k, v in cfg.items() if k != "eval"}
    assert config_digest(old) == config_digest(cfg)
    changed = config_dict(RunConfig(eval=EvalArgs(modes=["local", "global"])))
    assert config_digest(changed) != config_digest(cfg)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "split.json").write_text("{}")
    assert check_run_dir(tmp_path, cfg) is True


# ------------------------------------------------------------------------------------ the report
def fake_run(
    root: Path,
    name: str,
    method: str,
    seed: int,
    final: float,
    last5: float,
    knobs=None,
    source: str = "synthetic",
    b2n: dict | None = None,
) -> Path:
    """A run directory with a config.yaml and a results.json holding the given summary."""
    d = root / name
    d.mkdir(parents=True)
    cfg = config_dict(RunConfig())
    cfg["method"] = {"class_path": f"fedmoap.methods.x.{method}", "init_args": dict(knobs or {})}
    cfg["seed"], cfg["data"]["source"], cfg["fed"]["rounds"] = seed, source, 1
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = {"final_mean_acc": final, "last5_mean_acc": last5}
    rounds = [{"round": 1, "clients": {"0": {"acc": final, "correct": 1, "n": 1}}, "mean_acc": final}]
    if b2n:
        summary["base2novel"] = {"final": b2n, "last5": b2n}
    (d / "results.json").write_text(json.dumps({"rounds": rounds, "summary": summary, "method": method}))
    return d


def test_report_two_seeds_mean_and_sample_std(tmp_path, capsys):
    b2n = {"local": 0.9, "base": 0.8, "novel": 0.6, "hm": 0.68, "hm3": 0.75}
    fake_run(tmp_path, "p0", "promptfl", 0, 0.70, 0.60, {"n_ctx": 16}, b2n=b2n)
    fake_run(tmp_path, "p1", "promptfl", 1, 0.80, 0.64, {"n_ctx": 16}, b2n={**b2n, "novel": 0.7})
    fake_run(tmp_path, "m0", "pfedmoap", 0, 0.75, 0.75, {"lam": 0.5})
    fake_run(tmp_path, "m1", "pfedmoap", 1, 0.85, 0.75, {"lam": 0.5})
    fake_run(tmp_path, "z0", "pfedmoap", 0, 0.50, 0.50, {"lam": 0.0})
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if "promptfl" in line)
    assert "75.00 ± 7.07" in row and "62.00 ± 2.83" in row  # sample std of (70, 80) and (60, 64)
    assert "65.00 ± 7.07" in row  # b2n.novel
    assert any("pfedmoap (lam=0.5)" in line and "80.00 ± 7.07" in line for line in out)
    assert any("pfedmoap (lam=0.0)" in line and "| 50.00 |" in line for line in out)  # one seed: no std
    assert main(["report", str(tmp_path / "p0"), str(tmp_path / "p1"), "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    header, promptfl = csv[0].split(","), csv[1].split(",")
    assert float(promptfl[header.index("final_mean")]) == pytest.approx(75.0)
    assert float(promptfl[header.index("final_std")]) == pytest.approx(math.sqrt(50), abs=1e-4)
    assert main(["report", str(tmp_path), "--layout", "paper", "--metric", "last5"]) == 0
    paper = capsys.readouterr().out
    assert "| method | synthetic |" in paper and "| promptfl | 62.00 ± 2.83 |" in paper


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "group_by"])
def test_report_bad_inputs_one_line_exit_2(tmp_path, capsys, case):
    args = {
        "missing": [str(tmp_path / "nope")],
        "empty": [str(tmp_path)],
        "corrupt": [str(tmp_path / "bad")],
        "group_by": [str(tmp_path / "ok"), "--group-by", "nosuch.key"],
    }[case]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    (tmp_path / "bad" / "config.yaml").write_text("seed: 0\n")
    if case == "group_by":
        fake_run(tmp_path, "ok", "promptfl", 0, 0.5, 0.5)
    if case == "empty":
        (tmp_path / "bad").rename(tmp_path.parent / f"{tmp_path.name}-moved")
    capsys.readouterr()
    assert main(["report", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmoap: error: report:") and "\n" not in err


@pytest.mark.parametrize("name", ["promptfl", "pfedmoap", "promptfl_ft"])
def test_own_label_space_classifies_among_the_clients_own_classes(tmp_path, name):
    """``eval.local_label_space own``: each client's model chooses among the classes it trains on,
    so (argmax over a subset that holds the true class) it is right wherever it is right over all
    classes; the module's label space is restored afterwards."""
    from tests.worlds import tiny_world

    backbone, names, data = tiny_world(tmp_path / "cache", 3, alpha=0.02)
    knobs = {
        "promptfl": {"n_ctx": 4},
        "promptfl_ft": {"n_ctx": 4, "ft_epochs": 1},  # +FT adapts before it renames
        "pfedmoap": {"n_ctx": 4, "num_experts": 1, "d_gating": 16, "heads": 2},
    }[name]
    fed = tiny_federation((backbone, names, data), METHODS[name](**knobs), tmp_path / "store", rounds=1, keep=True)
    fed.run_round(1, progress=False)
    all_space = fed.evaluate([0, 1, 2], 1)
    own = tiny_federation(
        (backbone, names, data),
        METHODS[name](**knobs),
        fed.store,
        rounds=1,
        keep=True,
        eval_args=EvalArgs(local_label_space="own"),
        server=fed.server,
    )
    own_space = own.evaluate([0, 1, 2], 1)
    assert list(own.module.classnames) == names
    for c in range(3):
        assert own_space[c][1] == all_space[c][1] and own_space[c][0] >= all_space[c][0]
    assert min(len(data.own_classes(c)[0]) for c in range(3)) < len(names)
    assert sum(o[0] for o in own_space.values()) > sum(a[0] for a in all_space.values())


@pytest.mark.parametrize("name", ["fedavg_vpt", "pfedprompt"])
def test_own_label_space_refuses_methods_with_a_fixed_label_space(tmp_path, capsys, name):
    rc = main(
        [
            "fit",
            "--config",
            str(SMOKE),
            "--method",
            name,
            "--eval.local_label_space",
            "own",
            "--run_dir",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2 and f"eval.local_label_space own: method {name}" in capsys.readouterr().err
