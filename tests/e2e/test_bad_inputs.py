"""The bad-input matrix: every case ends with one line naming the culprit, exit code 2, and
nothing in an existing run directory changed (every file's bytes compared before and after).

Cases run in-process through ``fedmoap.run.cli.main`` (one import for all); ``tests/run/test_fit.py``
runs a few of them as real processes too (exit status, no traceback on stderr).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from fedmoap.run.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
ERROR_LINE = re.compile(r"(?<![A-Za-z])error:")
GARBAGE = b"this is not a torch checkpoint\x00\xff" * 8

# name -> (arguments, run dir kind, words the message must contain)
CASES: dict[str, tuple[list[str], str, list[str]]] = {
    # configs and command line
    "misspelt_flag": (["--fed.roundz", "3"], "existing", ["roundz"]),
    "misspelt_yaml_key": (["--config", "{misspelt_yaml}"], "existing", ["roundz"]),
    "wrong_type": (["--fed.rounds", "abc"], "existing", ["fed.rounds", "abc"]),
    "unknown_method": (["--method", "nosuchmethod"], "fresh", ["nosuchmethod"]),
    "another_methods_knob": (["--method", "promptfl", "--method.lam", "0.3"], "fresh", ["lam"]),
    "heads_zero": (["--method.heads", "0"], "fresh", ["method.heads"]),
    "template_without_braces": (["--method.template", "X"], "fresh", ["method.template"]),
    "negative_lr": (["--train.lr", "-1"], "existing", ["train.lr"]),
    "eval_batch_zero": (["--train.eval_batch_size", "0"], "fresh", ["train.eval_batch_size"]),
    "momentum_too_big": (["--train.momentum", "1.5"], "fresh", ["train.momentum"]),
    "max_test_zero": (["--data.max_test_per_client", "0"], "fresh", ["data.max_test_per_client"]),
    "participation_zero": (["--fed.participation", "0"], "fresh", ["fed.participation"]),
    "rounds_zero": (["--fed.rounds", "0"], "existing", ["fed.rounds"]),
    "num_clients_zero": (["--data.num_clients", "0"], "fresh", ["data.num_clients"]),
    "shots_zero": (["--data.shots", "0"], "fresh", ["data.shots"]),
    "negative_views": (["--data.num_views", "-1"], "fresh", ["data.num_views"]),
    "duplicate_classnames": (["--data.classnames", "[a,a,b,c,d,e,f,g,h,i]"], "fresh", ["data.classnames"]),
    "bad_precision": (["--fabric.precision", "8-bit"], "fresh", ["fabric.precision", "8-bit"]),
    # differential privacy (fedmoap/federation/privacy.py)
    "dp_without_clip": (["--dp.mode", "client_upload", "--dp.epsilon", "8"], "fresh", ["dp.clip"]),
    "dp_epsilon_and_noise_multiplier": (
        ["--dp.mode", "record_sgd", "--dp.clip", "1", "--dp.epsilon", "8", "--dp.noise_multiplier", "1"],
        "existing",
        ["dp.epsilon", "dp.noise_multiplier"],
    ),
    "dp_budget_without_mode": (["--dp.epsilon", "8"], "existing", ["dp.epsilon", "dp.mode"]),
    "dp_preset_other_epsilon": (
        ["--dp.mode", "client_upload", "--dp.clip", "1", "--dp.preset", "pfedmoap-appendix", "--dp.epsilon", "8"],
        "fresh",
        ["dp.preset", "dp.epsilon"],
    ),
    "dp_unknown_mode": (["--dp.mode", "central"], "fresh", ["dp.mode", "central"]),
    "other_config_on_run_dir": (["--seed", "1"], "existing", ["seed"]),
    # models
    "unknown_arch": (["--model.arch", "no-such-arch"], "fresh", ["model.arch", "no-such-arch"]),
    "missing_weights_file": (["--model.pretrained", "/nonexistent/w.pt"], "fresh", ["model.pretrained"]),
    "strided_indivisible": (
        ["--method.reduction", "strided", "--method.d_gating", "48", "--method.heads", "4"],
        "fresh",
        ["method.reduction", "48"],
    ),
    "vision_method_on_a_cnn": (
        ["--method", "fedvpt", "--model.arch", "fedmoap-tiny-rn"],
        "fresh",
        ["fedvpt", "ModifiedResNet"],
    ),
    # datasets and splits
    "missing_dataset": (["--data.source", "/nonexistent/dir"], "fresh", ["data.source", "/nonexistent/dir"]),
    "class_count_mismatch": (["--data.classnames", "[a,b,c]"], "fresh", ["data.classnames", "3", "10"]),
    "missing_label_column": (["--data.label_column", "nolabel"], "fresh", ["nolabel"]),
    "string_labels_not_in_classnames": (
        ["--data.source", "{strings}", "--data.classnames", "[cat,dog]"],
        "fresh",
        ["data.label_column", "bird"],
    ),
    "fractional_labels": (
        ["--data.source", "{floats}", "--data.classnames", "[a,b,c]"],
        "fresh",
        ["data.label_column", "non-integer"],
    ),
    "domain_dirichlet_without_column": (["--data.partition", "domain_dirichlet"], "fresh", ["data.domain_column"]),
    "domains_not_divisible": (
        ["--data.partition", "domain_dirichlet", "--data.domain_column", "domain", "--data.num_clients", "5"],
        "fresh",
        ["data.num_clients", "2 domains"],
    ),
    "too_many_classes_per_client": (
        ["--data.partition", "pathological", "--data.classes_per_client", "5"],
        "fresh",
        ["classes_per_client"],
    ),
    "split_file_missing": (["--data.split_file", "/nonexistent/split.json"], "fresh", ["data.split_file"]),
    "split_file_other_client_count": (
        ["--data.split_file", "{split}", "--data.num_clients", "4"],
        "fresh",
        ["data.split_file", "4"],
    ),
    "split_file_corrupt": (["--data.split_file", "{garbage}"], "fresh", ["data.split_file"]),
    "split_file_is_a_directory": (["--data.split_file", "{a_dir}"], "fresh", ["data.split_file", "is a directory"]),
    "split_file_json_of_another_shape": (
        ["--data.split_file", "{split_list}"],
        "fresh",
        ["data.split_file", "not a valid split file"],
    ),
    "split_file_fractional_indices": (
        ["--data.split_file", "{split_floats}"],
        "fresh",
        ["data.split_file", "client 0"],
    ),
    "split_file_client_without_test_samples": (
        ["--data.split_file", "{split_no_test}"],
        "fresh",
        ["data.split_file", "clients [1]", "no test samples"],
    ),
    "split_file_ids_out_of_order": (
        ["--data.split_file", "{split_ids}"],
        "fresh",
        ["data.split_file", "client 0", "id 5"],
    ),
    "resumed_split_of_another_shape": (["--fed.rounds", "3"], "split_shape", ["split.json", "clients"]),
    "resumed_split_client_without_training": (
        ["--fed.rounds", "3"],
        "split_no_train",
        ["split.json", "clients [2]", "no training"],
    ),
    "feature_cache_is_a_file": (["--data.feature_cache", "{garbage}"], "existing", ["data.feature_cache", "is a file"]),
    "feature_cache_under_a_file": (
        ["--data.feature_cache", "{garbage}/sub"],
        "fresh",
        ["data.feature_cache", "garbage.json", "is a file"],
    ),
    # run directories, checkpoints, client states
    "corrupt_checkpoint": (["--fed.rounds", "3"], "corrupt", ["{newest}"]),
    "corrupt_client_state": (["--fed.rounds", "3"], "corrupt_state", ["{newest}"]),
    "empty_config_yaml": ([], "empty_config", ["config.yaml"]),
    "config_section_not_a_mapping": ([], "int_section", ["config.yaml"]),
    "config_not_yaml": ([], "bad_yaml", ["config.yaml"]),
    "run_dir_is_a_file": ([], "file", ["is a file"]),
    "run_dir_under_a_file": ([], "under_file", ["lies under", "is a file"]),
    "run_dir_holds_something_else": ([], "foreign", ["not empty"]),
    "checkpoint_holding_a_list": (["--fed.rounds", "3"], "ckpt_list", ["{newest}"]),
    "checkpoint_of_another_structure": (["--fed.rounds", "3"], "ckpt_structure", ["{newest}", "store"]),
    "checkpoint_missing_a_round": (["--fed.rounds", "3"], "ckpt_history", ["{newest}", "rounds 1 to 2"]),
    "run_dir_a_broken_link": ([], "broken_link", ["broken symbolic link"]),
    # a run dir whose entries fedmoap did not write: refused before round 3 is trained
    "results_json_is_a_folder": (["--fed.rounds", "3"], "results_folder", ["results.json", "folder"]),
    "checkpoints_is_a_file": (["--fed.rounds", "3"], "checkpoints_file", ["checkpoints", "is a file"]),
    "client_state_is_a_folder": (["--fed.rounds", "3"], "state_folder", ["{newest}", "folder"]),
    "clients_holds_a_stranger": (["--fed.rounds", "3"], "clients_stranger", ["notes.txt"]),
    "tensorboard_is_a_file": (["--fed.rounds", "3"], "tensorboard_file", ["tensorboard", "is a file"]),
    "config_yaml_is_a_folder_after_an_aborted_start": ([], "aborted_config_folder", ["config.yaml", "folder"]),
    # evaluation modes
    "unknown_eval_mode": (["--eval.modes", "[local,nosuchmode]"], "fresh", ["eval.modes", "nosuchmode"]),
    "base2novel_with_a_linear_head": (
        ["--method", "evalcase_linear.LinearHead", "--eval.modes", "[local,base2novel]"],
        "fresh",
        ["eval.modes base2novel", "LinearHead"],
    ),
    "base_fraction_zero": (
        ["--eval.modes", "[base2novel]", "--eval.base_fraction", "0"],
        "fresh",
        ["eval.base_fraction"],
    ),
    "every_client_held_out": (
        ["--eval.modes", "[unseen_clients]", "--eval.unseen_fraction", "0.95"],
        "fresh",
        ["eval.unseen_fraction", "6"],
    ),
    "negative_adaptation_epochs": (["--eval.adaptation_epochs", "-1"], "fresh", ["eval.adaptation_epochs"]),
    "base2novel_on_a_split_with_novel_training": (
        ["--data.split_file", "{split}", "--eval.modes", "[local,base2novel]"],
        "fresh",
        ["data.split_file", "novel"],
    ),
    "other_eval_modes_on_run_dir": (["--eval.modes", "[local,global]"], "existing", ["eval.modes"]),
    # method knobs are type-checked like every other setting, wherever they are written
    "knob_not_a_number": (["--method.lam", "abc"], "existing", ["method.lam", "abc"]),
    "int_knob_given_a_float": (["--method.heads", "4.0"], "existing", ["method.heads", "4.0"]),
    "int_knob_given_a_bool": (["--method.heads", "true"], "fresh", ["method.heads"]),
    "pfeddc_int_knob_given_a_float": (
        ["--method", "pfeddc", "--method.fusion_heads", "4.0"],
        "fresh",
        ["method.fusion_heads", "4.0"],
    ),
    "n_ctx_fractional": (["--method.n_ctx", "2.5"], "fresh", ["method.n_ctx", "2.5"]),
    "experts_per_client_a_list": (["--method.experts_per_client", "[1,2]"], "existing", ["method.experts_per_client"]),
    "literal_knob_unknown_value": (
        ["--method.moe_similarity", "bogus"],
        "existing",
        ["method.moe_similarity", "bogus"],
    ),
    "knob_not_a_number_in_yaml": (["--config", "{lam_abc_yaml}"], "existing", ["method.lam", "abc"]),
    "knob_not_a_number_in_inline_method": (
        ["--method", "{{class_path: fedmoap.methods.pfedmoap.PFedMoAP, init_args: {{heads: 2.5}}}}"],
        "fresh",
        ["method.heads", "2.5"],
    ),
    # infinity and NaN are not numbers a run can use
    "lr_infinite": (["--train.lr", ".inf"], "fresh", ["train.lr", "finite"]),
    "lr_overflowing": (["--train.lr", "1e999"], "fresh", ["train.lr", "finite"]),
    "lr_nan": (["--train.lr", ".nan"], "fresh", ["train.lr"]),
    "gating_lr_infinite": (["--method.gating_lr", ".inf"], "fresh", ["method.gating_lr", "finite"]),
    "sigma_infinite": (["--method", "fedamp", "--method.sigma", ".inf"], "fresh", ["method.sigma", "finite"]),
    "dp_noise_infinite": (
        ["--dp.mode", "client_upload", "--dp.clip", "1", "--dp.noise_multiplier", ".inf"],
        "fresh",
        ["dp.noise_multiplier", "finite"],
    ),
    "dp_clip_nan": (["--dp.mode", "client_upload", "--dp.clip", ".nan", "--dp.epsilon", "8"], "fresh", ["dp.clip"]),
    # config files that are not YAML settings
    "binary_config": (["--config", "{binary}"], "existing", ["{binary}", "not a text"]),
    "binary_config_after_equals": (["--config={binary}"], "existing", ["{binary}", "not a text"]),
    "empty_config_file": (["--config", "{empty}"], "existing", ["{empty}", "empty"]),
    "config_file_a_list": (["--config", "{list_yaml}"], "existing", ["{list_yaml}", "not a mapping"]),
    "duplicate_yaml_key": (["--config", "{dup_yaml}"], "existing", ["{dup_yaml}", "'seed' appears twice"]),
    "duplicate_nested_yaml_key": (
        ["--config", "{dup_nested_yaml}"],
        "existing",
        ["{dup_nested_yaml}", "'rounds' appears twice"],
    ),
    # settings that crashed or blamed the wrong thing
    "base_class_as_method": (
        ["--method", "fedmoap.methods.base.Method"],
        "fresh",
        ["method", "fedmoap.methods.base.Method"],
    ),
    "accelerator_not_installed": (["--fabric.accelerator", "tpu"], "existing", ["fabric.accelerator", "tpu"]),
    "threads_absurd": (["--fabric.threads", "100000"], "existing", ["fabric.threads", "1024"]),
    "seed_overflowing": (["--seed", str(2**70)], "fresh", ["seed", str(2**70)]),
    "seed_negative": (["--seed", "-1"], "fresh", ["seed", "-1"]),
    "n_ctx_beyond_text_context": (["--method.n_ctx", "500"], "fresh", ["method.n_ctx 500", "77"]),
    "test_split_is_train_split": (["--data.test_split", "train"], "fresh", ["data.test_split", "data.train_split"]),
    "empty_source": (["--data.source", ""], "fresh", ["data.source"]),
    "blank_source": (["--data.source", "  "], "existing", ["data.source"]),
    "num_nodes_without_peers": (["--fabric.num_nodes", "2"], "existing", ["fabric.num_nodes"]),
    # a config file is read only if it is a regular file of at most 1 MiB
    "config_a_device": (["--config", "/dev/zero"], "existing", ["/dev/zero", "not a regular file"]),
    "config_too_large": (["--config", "{big_yaml}"], "existing", ["{big_yaml}", "1 MiB"]),
    "config_a_directory": (["--config", "{a_dir}"], "existing", ["{a_dir}", "is a directory"]),
    # settings that ran as something else
    "pretrained_empty": (["--model.pretrained", ""], "fresh", ["model.pretrained", "empty"]),
    "pretrained_blank": (["--model.pretrained", " "], "existing", ["model.pretrained", "empty"]),
    "bf16_true_is_float32": (["--fabric.precision", "bf16-true"], "fresh", ["fabric.precision", "bf16-true"]),
    "negative_labels": (
        ["--data.source", "{negative}", "--data.classnames", "[a,b,c]"],
        "fresh",
        ["data.label_column", "negative labels", "'train'"],
    ),
}
LINEAR_HEAD = '''
from dataclasses import dataclass

from torch import nn

from fedmoap.methods.base import ClientModule, Method, Server


class LinearHeadClient(ClientModule):
    def __init__(self, method, backbone, classnames, run):
        super().__init__(method, backbone, classnames, run)
        self.head = nn.Linear(backbone.embed_dim, len(classnames))

    def forward(self, batch):
        return self.head(batch["features"])


@dataclass
class LinearHead(Method):
    """A linear head on frozen features: no class names, so no base-to-novel."""

    client_class = LinearHeadClient
    server_class = Server
'''
"""A method that cannot evaluate on unseen class names (unnamed: not in the registry)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A finished 2-round smoke run, and the files the cases point at."""
    root = tmp_path_factory.mktemp("bad")
    cache = root / "cache"
    base = root / "base"
    assert (
        main(
            [
                "fit",
                "--config",
                str(SMOKE),
                "--fed.rounds",
                "2",
                "--run_dir",
                str(base),
                "--data.feature_cache",
                str(cache),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    files = {
        "split": str(base / "split.json"),
        "garbage": str(root / "garbage.json"),
        "a_dir": str(root / "a_dir"),
        "split_list": str(root / "split_list.json"),
        "split_floats": str(root / "split_floats.json"),
    }
    Path(files["garbage"]).write_text("{not json")
    Path(files["a_dir"]).mkdir()
    Path(files["split_list"]).write_text(json.dumps([[0, 1], [2, 3]]))
    floats = json.loads((base / "split.json").read_text())
    floats["clients"][0]["train"] = [i + 0.5 for i in floats["clients"][0]["train"]]
    Path(files["split_floats"]).write_text(json.dumps(floats))
    for name, change in (("split_no_test", (1, "test", [])), ("split_ids", (0, "id", 5))):
        split = json.loads((base / "split.json").read_text())
        split["clients"][change[0]][change[1]] = change[2]
        files[name] = str(root / f"{name}.json")
        Path(files[name]).write_text(json.dumps(split))
    misspelt = root / "misspelt.yaml"
    misspelt.write_text(SMOKE.read_text().replace("  rounds: 3", "  roundz: 3"))
    files["misspelt_yaml"] = str(misspelt)
    image = [[[0, 0, 0]] * 4] * 4
    for name, labels, feature in (
        ("strings", ["cat", "dog", "bird"], Value("string")),
        ("floats", [0.0, 1.5, 2.0], Value("float64")),
        ("negative", [-1, 1, 2], Value("int64")),
    ):
        split = Dataset.from_dict(
            {"image": [image] * 3, "label": labels}, features=Features({"image": Image(), "label": feature})
        )
        DatasetDict(train=split, test=split).save_to_disk(str(root / name))
        files[name] = str(root / name)
    smoke = SMOKE.read_text()
    texts = {
        "lam_abc_yaml": smoke.replace("    heads: 4\n", "    heads: 4\n    lam: abc\n"),
        "dup_yaml": smoke + "seed: 1\n",
        "dup_nested_yaml": smoke.replace("  rounds: 3\n", "  rounds: 3\n  rounds: 4\n"),
        "list_yaml": "- seed\n- 1\n",
        "empty": "\n",
    }
    for name, text in texts.items():
        assert text != smoke
        files[name] = str(root / f"{name}.yaml")
        Path(files[name]).write_text(text)
    files["big_yaml"] = str(root / "big.yaml")
    Path(files["big_yaml"]).write_text(smoke + "# padding\n" * 120_000)
    files["binary"] = str(root / "binary.yaml")
    Path(files["binary"]).write_bytes(bytes(range(256)) * 4)
    (root / "evalcase_linear.py").write_text(LINEAR_HEAD)
    sys.path.insert(0, str(root))
    return root, base, cache, files


def prepare(root: Path, base: Path, name: str, kind: str) -> tuple[Path, Path | None]:
    run_dir, newest = root / "cases" / name, None
    run_dir.parent.mkdir(exist_ok=True)
    if kind not in ("fresh", "file", "under_file", "foreign", "aborted_config_folder", "broken_link"):
        shutil.copytree(base, run_dir)
    checkpoints = sorted(run_dir.glob("checkpoints/round_*.pt"))
    if kind in ("ckpt_list", "ckpt_structure", "ckpt_history", "state_folder"):
        newest = checkpoints[-1]
    if kind == "ckpt_list":
        torch.save([1, 2, 3], newest)
    elif kind == "ckpt_history":
        ckpt = torch.load(newest, weights_only=True)
        torch.save({**ckpt, "history": ckpt["history"][1:]}, newest)
    elif kind == "broken_link":
        run_dir.symlink_to(root / "nowhere")
    elif kind == "ckpt_structure":
        ckpt = torch.load(newest, weights_only=True)
        torch.save({**ckpt, "store": [ckpt["store"]]}, newest)
    elif kind == "state_folder":  # a client state the newest checkpoint names
        newest = sorted(run_dir.glob("clients/*/round_*.pt"))[-1]
        newest.unlink()
        (newest / "x").mkdir(parents=True)
    elif kind in ("split_shape", "split_no_train"):
        split = json.loads((run_dir / "split.json").read_text())
        if kind == "split_shape":
            split["clients"] = {"0": split["clients"][0]}
        else:
            split["clients"][2]["train"] = []
        (run_dir / "split.json").write_text(json.dumps(split))
    elif kind == "results_folder":
        (run_dir / "results.json").unlink()
        (run_dir / "results.json").mkdir()
        (run_dir / "results.json" / "x").write_text("x")
    elif kind == "checkpoints_file":
        shutil.rmtree(run_dir / "checkpoints")
        (run_dir / "checkpoints").write_text("x")
    elif kind == "clients_stranger":
        (run_dir / "clients" / "notes.txt").write_text("x")
    elif kind == "tensorboard_file":
        shutil.rmtree(run_dir / "tensorboard")
        (run_dir / "tensorboard").write_text("x")
    elif kind == "aborted_config_folder":
        run_dir.mkdir()
        shutil.copy(base / "split.json", run_dir / "split.json")
        (run_dir / "config.yaml").mkdir()
        (run_dir / "config.yaml" / "x").write_text("x")
    elif kind == "under_file":
        (run_dir.parent / "a_file").write_text("x")
        run_dir = run_dir.parent / "a_file" / "run"
    if kind == "corrupt":
        newest = sorted((run_dir / "checkpoints").glob("round_*.pt"))[-1]
        newest.write_bytes(GARBAGE)
    elif kind == "corrupt_state":
        newest = sorted(sorted((run_dir / "clients").glob("*/round_*.pt"))[0].parent.iterdir())[-1]
        newest.write_bytes(GARBAGE)
    elif kind == "empty_config":
        (run_dir / "config.yaml").write_text("")
    elif kind == "int_section":
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        (run_dir / "config.yaml").write_text(yaml.safe_dump({**cfg, "fed": 3}))
    elif kind == "bad_yaml":
        (run_dir / "config.yaml").write_text("method: [unclosed\n")
    elif kind == "file":
        run_dir.write_text("not a directory")
    elif kind == "foreign":
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("my notes")
    return run_dir, newest


def snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


LAUNCHER_VARIABLES = (
    "SLURM_NTASKS",
    "SLURM_NNODES",
    "TORCHELASTIC_RUN_ID",
    "MASTER_ADDR",
    "NODE_RANK",
    "LSB_JOBID",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly(setup, case, capsys, monkeypatch):
    for name in LAUNCHER_VARIABLES:  # as on a workstation: no launcher supplies other nodes
        monkeypatch.delenv(name, raising=False)
    root, base, cache, files = setup
    extra, kind, words = CASES[case]
    run_dir, newest = prepare(root, base, case, kind)
    extra = [a.format(**files) for a in extra]
    config = [] if "--config" in extra else ["--config", str(SMOKE)]
    cache_arg = [] if "--data.feature_cache" in extra else ["--data.feature_cache", str(cache)]
    assert_fails_cleanly(
        capsys,
        ["fit", *config, *extra, "--run_dir", str(run_dir), *cache_arg, "--progress", "false"],
        run_dir,
        words,
        case,
        newest,
        files,
    )


def assert_fails_cleanly(
    capsys,
    argv: list[str],
    run_dir: Path,
    words: list[str],
    case: str,
    newest: Path | None = None,
    files: dict[str, str] | None = None,
) -> None:
    """``fedmoap ARGV`` exits with 2 and one error line holding ``words``, ``run_dir`` unchanged."""
    before = snapshot(run_dir)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: exit code {rc}; stderr: {err}"
    errors = ERROR_LINE.findall(err)
    assert len(errors) == 1, f"{case}: expected one error line, got:\n{err}"
    line = err[ERROR_LINE.search(err).start() :].strip()
    assert "\n" not in line, f"{case}: the error takes several lines:\n{line}"
    for word in words:
        for key, value in {"newest": newest, **(files or {})}.items():
            word = word.replace("{" + key + "}", str(value))
        assert word in line, f"{case}: the error does not name {word!r}: {line}"
    assert snapshot(run_dir) == before, f"{case}: the run dir was changed"


def test_the_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30


def test_an_aborted_start_is_restarted_not_refused(setup):
    """A start killed after writing split.json (or config.yaml) but before any round is a
    fresh run on the next attempt, not an unresumable directory."""
    root, base, cache, _ = setup
    for keep in ("split.json", "config.yaml"):
        run_dir = root / f"aborted_{keep}"
        run_dir.mkdir()
        shutil.copy(base / keep, run_dir / keep)
        assert (
            main(
                [
                    "fit",
                    "--config",
                    str(SMOKE),
                    "--fed.rounds",
                    "1",
                    "--run_dir",
                    str(run_dir),
                    "--data.feature_cache",
                    str(cache),
                    "--progress",
                    "false",
                ]
            )
            == 0
        )
        assert json.loads((run_dir / "results.json").read_text())["rounds"][0]["round"] == 1


# ----- images that cannot be decoded ----------------------------------------------------------
def png(size: int, value: int) -> bytes:
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), (value, 255 - value, 0)).save(buf, format="PNG")
    return buf.getvalue()


BAD_ROW = 5
IMAGE_CASES = {  # name -> (what train row BAD_ROW holds, words the message must contain)
    "corrupt_image_bytes": ({"bytes": b"not an image at all", "path": None}, ["UnidentifiedImageError"]),
    "truncated_image": ({"bytes": png(16, 9)[:60], "path": None}, ["truncated"]),
    "missing_image": (None, ["None"]),
    "corrupt_image_file": ("file", ["bad.png"]),
    "decompression_bomb": ({"bytes": png(64, 9), "path": None}, ["DecompressionBombError"]),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_that_cannot_be_decoded_is_named(setup, case, capsys, tmp_path, monkeypatch):
    """A corrupt, truncated, missing (None) or decompression-bomb image stops the set-up with
    one line naming data.source, the split and the row (and its file where it has one)."""
    from PIL import Image as PILImage

    root, base, cache, _ = setup
    bad, words = IMAGE_CASES[case]
    if bad == "file":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        bad = {"bytes": None, "path": str(tmp_path / "bad.png")}
    train = [{"bytes": png(16, 20 * i), "path": None} for i in range(8)]
    train[BAD_ROW] = bad
    test = [{"bytes": png(16, 20 * i + 7), "path": None} for i in range(4)]
    features = Features({"image": Image(), "label": ClassLabel(names=["ant", "bee"])})
    source = tmp_path / "images"
    DatasetDict(
        train=Dataset.from_dict({"image": train, "label": [0, 1] * 4}, features=features),
        test=Dataset.from_dict({"image": test, "label": [0, 1] * 2}, features=features),
    ).save_to_disk(str(source))
    # the bomb is 64x64 (4096 pixels), the others 16x16: over twice this limit, Pillow refuses it
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    assert_fails_cleanly(
        capsys,
        [
            "fit",
            "--config",
            str(SMOKE),
            "--data.source",
            str(source),
            "--data.num_clients",
            "2",
            "--data.partition",
            "iid",
            "--data.shots",
            "null",
            "--run_dir",
            str(tmp_path / "run"),
            "--data.feature_cache",
            str(tmp_path / "c"),
            "--progress",
            "false",
        ],
        tmp_path / "run",
        ["data.source", str(source), f"image {BAD_ROW} of", "/train", *words],
        case,
    )
    assert not (tmp_path / "run").exists()


# ----- fedmoap report on malformed results -----------------------------------------------------
MALFORMED_RESULTS = {
    "a_list": lambda r: [r],
    "rounds_an_object": lambda r: {**r, "rounds": {"1": r["rounds"][0]}},
    "round_without_number": lambda r: {**r, "rounds": [{k: v for k, v in r["rounds"][0].items() if k != "round"}]},
    "summary_a_list": lambda r: {**r, "summary": [r["summary"]]},
    "clients_a_list": lambda r: {**r, "rounds": [{**r["rounds"][-1], "clients": [1, 2]}]},
    "client_without_acc": lambda r: {**r, "rounds": [{**r["rounds"][-1], "clients": {"0": {"n": 3}}}]},
    "mode_summary_a_number": lambda r: {**r, "summary": {**r["summary"], "global": 0.5}},
}


@pytest.mark.parametrize("case", list(MALFORMED_RESULTS))
def test_report_on_malformed_results_names_the_run(setup, case, capsys, tmp_path):
    _, base, _, _ = setup
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(base / "config.yaml", run_dir / "config.yaml")
    results = json.loads((base / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps(MALFORMED_RESULTS[case](results)))
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmoap: error: report:") and "\n" not in err, err
    assert str(run_dir) in err


# ----- fedmoap sweep: every cell of a grid is parsed first, so a bad value writes nothing -----------
SWEEP_CASES: dict[str, tuple[list[str], list[str]]] = {
    "knob_not_a_number": (["--grid", "pfedmoap.lam=0.5,abc"], ["method.lam", "abc"]),
    "int_knob_given_a_float": (["--grid", "method.heads=4.0"], ["method.heads", "4.0"]),
    "literal_knob_unknown_value": (["--grid", "method.moe_similarity=cosine,bogus"], ["method.moe_similarity"]),
    "lr_infinite": (["--grid", "train.lr=0.1,.inf"], ["train.lr", "finite"]),
    "binary_config": (["--config", "{binary}"], ["{binary}"]),
    "empty_config": (["--config", "{empty}"], ["{empty}", "empty"]),
    "duplicate_yaml_key": (["--config", "{dup_yaml}"], ["{dup_yaml}", "'seed' appears twice"]),
    "knob_not_a_number_in_yaml": (["--config", "{lam_abc_yaml}"], ["method.lam", "abc"]),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_bad_sweep_fails_cleanly_and_writes_nothing(setup, case, capsys):
    root, _, _, files = setup
    extra, words = SWEEP_CASES[case]
    extra = [a.format(**files) for a in extra]
    config = [] if "--config" in extra else ["--config", str(SMOKE)]
    out = root / f"sweep_{case}"
    out.mkdir()
    (out / "grid.sweep.txt").write_text("an earlier sweep\n")
    capsys.readouterr()
    rc = main(["sweep", *config, *extra, "--seeds", "0", "--slurm", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, f"{case}: exit code {rc}; stderr: {err}"
    assert len(ERROR_LINE.findall(err)) == 1 and err.strip().count("\n") == 0, err
    for word in words:
        assert word.format(**files) in err, f"{case}: the error does not name {word!r}: {err}"
    assert [p.name for p in out.iterdir()] == ["grid.sweep.txt"]
    assert (out / "grid.sweep.txt").read_text() == "an earlier sweep\n"


def test_num_nodes_needs_a_launcher_that_supplies_the_nodes(monkeypatch):
    from fedmoap.distributed import peers_problem

    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert peers_problem(1) is None
    assert "fabric.num_nodes 2" in peers_problem(2)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("NODE_RANK", "1")
    assert peers_problem(2) is None  # Lightning's plain environment: the user starts every node
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NNODES", "1")
    assert "1 node" in peers_problem(2)  # srun, but the job has fewer nodes than asked for
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert peers_problem(2) is None


# ----- output files of eval, sweep, report and mia: checked before any work ----------------------
def assert_one_error_line(capsys, argv: list[str], words: list[str]) -> None:
    """``fedmoap ARGV`` exits with 2 and one ``fedmoap: error:`` line holding ``words``."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, f"exit code {rc}; stderr: {err}"
    assert err.startswith("fedmoap: error:") and err.strip().count("\n") == 0, err
    for word in words:
        assert word in err, f"the error does not name {word!r}: {err}"


@pytest.mark.parametrize("where", ["under_a_file", "a_directory"])
def test_eval_out_that_cannot_be_a_file_is_refused_first(setup, where, capsys, tmp_path):
    _, base, cache, _ = setup
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    out = tmp_path / ("afile/x.json" if where == "under_a_file" else "adir")
    before = snapshot(base)
    assert_one_error_line(
        capsys, ["eval", str(base), "--data.feature_cache", str(cache), "--out", str(out)], ["--out", str(out)]
    )
    assert snapshot(base) == before
    assert (tmp_path / "afile").read_text() == "x" and not any((tmp_path / "adir").iterdir())


def test_sweep_out_under_a_file_is_refused(setup, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_error_line(
        capsys,
        ["sweep", "--config", str(SMOKE), "--grid", "fed.rounds=1,2", "--seeds", "0", "--slurm"]
        + ["--out", str(tmp_path / "afile")],
        ["--out", str(tmp_path / "afile")],
    )
    assert (tmp_path / "afile").read_text() == "x"


STUDY = REPO / "configs" / "studies" / "offline_default.yaml"


@pytest.mark.parametrize(
    "command", [["report", "--study", str(STUDY)], ["sweep", "--study", str(STUDY), "--slurm"]], ids=["report", "slurm"]
)
def test_study_out_under_a_file_is_refused(command, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_one_error_line(capsys, [*command, "--out", str(tmp_path / "afile")], ["--out", str(tmp_path / "afile")])
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("lr", [".inf", ".nan", "1e999"])
def test_mia_float_options_must_be_finite(setup, lr, capsys, tmp_path):
    _, base, _, _ = setup
    out = tmp_path / "mia"
    assert_one_error_line(
        capsys, ["mia", str(base), "--shadows", "1", "--epochs", "1", "--lr", lr, "--out", str(out)], ["--lr", "finite"]
    )
    assert not out.exists()


def test_mia_json_that_cannot_be_written_is_refused_before_the_shadows(setup, capsys, tmp_path):
    _, base, _, _ = setup
    out = tmp_path / "mia"
    (out / "mia.json").mkdir(parents=True)
    assert_one_error_line(
        capsys, ["mia", str(base), "--shadows", "1", "--epochs", "1", "--out", str(out)], ["--out", "mia.json"]
    )
    assert sorted(p.name for p in out.iterdir()) == ["mia.json"]


@pytest.mark.parametrize(
    "option, value", [("--client_gpus", "nan"), ("--client_cpus", "inf"), ("--client_gpus", "inf")]
)
def test_flower_resources_must_be_finite(option, value, capsys, tmp_path):
    pytest.importorskip("flwr")
    app = tmp_path / "app"
    argv = ["flower", "--config", str(SMOKE), "--run_dir", str(tmp_path / "run"), "--app", str(app), "--write_only"]
    assert_one_error_line(capsys, [*argv, option, value], [option, value])
    assert not app.exists() and not (tmp_path / "run").exists()


# ----- the library's own log lines of a dataset it cannot read ------------------------------------
def test_an_unreadable_dataset_is_one_line_without_the_librarys_log(setup, tmp_path):
    """``datasets`` logs a parquet file it cannot read at ERROR (to its own handler and the root
    logger's) before raising; only fedmoap's line about it reaches stderr. (A real process: in
    this one the loggers' streams are pytest's.)"""
    import subprocess

    _, _, cache, _ = setup
    source = tmp_path / "broken"
    source.mkdir()
    for split in ("train", "test"):
        (source / f"{split}.parquet").write_bytes(b"not a parquet file")
    cmd = [sys.executable, "-m", "fedmoap", "fit", "--config", str(SMOKE), "--data.source", str(source)]
    cmd += ["--run_dir", str(tmp_path / "run"), "--data.feature_cache", str(cache), "--progress", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    err = proc.stderr
    assert proc.returncode == 2, err
    about = [line for line in err.splitlines() if "error" in line.lower() or "parquet" in line.lower()]
    assert len(about) == 1 and about[0].startswith("fedmoap: error: data.source"), err
    assert str(source) in about[0] and not (tmp_path / "run").exists()


# ----- a preemption signal during start-up ------------------------------------------------------
def handles(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (Linux: /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(caught & (1 << (sig - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
def test_sigterm_during_start_up_stops_at_once_writing_nothing(setup, tmp_path):
    """SIGTERM while the arguments are parsed and the libraries load (seconds before set-up ends)
    stops the process there, as Ctrl-C does: exit 3 with one line, no run directory."""
    import os
    import signal
    import subprocess
    import time

    from fedmoap.preemption import EXIT_PREEMPTED

    _, _, cache, _ = setup
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedmoap", "fit", "--config", str(SMOKE), "--run_dir", str(run_dir)]
    cmd += ["--data.feature_cache", str(cache), "--progress", "false"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={**os.environ})
    deadline = time.monotonic() + 60
    while proc.poll() is None and not handles(proc.pid, signal.SIGTERM):  # fedmoap's handler, then signal
        assert time.monotonic() < deadline, "no SIGTERM handler after 60 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err
    lines = [line for line in err.splitlines() if line.startswith("fedmoap:")]
    assert "Traceback" not in err and len(lines) == 1 and "start-up" in lines[0], err
    assert not run_dir.exists()


def test_a_signal_before_set_up_ends_stops_before_any_write(setup, tmp_path):
    """A signal already received when fit() starts stops it before the run directory is written
    (not at round 1, after split.json and config.yaml)."""
    import os
    import signal

    from fedmoap.preemption import Preempted, stop_flag
    from fedmoap.run.fit import fit
    from fedmoap.run.parse import parse_fit

    _, _, cache, _ = setup
    cfg, _, _ = parse_fit(["fit", "--config", str(SMOKE), "--data.feature_cache", str(cache), "--fed.rounds", "1"])
    flag = stop_flag()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted, match="signal 15"):
            fit(cfg, tmp_path / "run", progress=False)
    finally:
        flag.close()
    assert not (tmp_path / "run").exists()
