"""The evidence steps that are not study runs (configs/studies/ holds those, tests/run/test_studies.py
tests them): the DP study's clip calibration, the ordering study's meaningless class names, and
the refactor gate scripts/same_numbers.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from fedmoap.run.parse import parse_fit  # noqa: E402

TINY = ["--config", str(REPO / "configs" / "smoke.yaml"), "--fabric.threads", "1"]


def test_dp_clip_is_the_median_upload_norm_of_the_proxy_run(tmp_path):
    import dp_clip

    from fedmoap.run import runs

    clip = dp_clip.main(
        ["--out", str(tmp_path / "proxy"), "--", *TINY, "--data.feature_cache", str(tmp_path / "cache")]
    )
    rounds = runs.read_run(tmp_path / "proxy").results["rounds"]
    assert len(rounds) == 3 and math.isfinite(clip) and clip > 0
    norms = sorted(r["dp_median_norm"] for r in rounds)
    assert clip == norms[1]


def test_nonsense_names_one_word_per_class_of_the_chosen_dataset(capsys):
    """The ordering study on a dataset of the user's (here the synthetic source): one meaningless
    word per class, the committed study's words first."""
    import nonsense_names

    from fedmoap.data.sources import load_source

    args = [*TINY, "--data.source", "synthetic"]
    text = nonsense_names.main(args)
    count = len(load_source(parse_fit(["fit", *args])[0].data).classnames)
    names = text.strip("[]").split(", ")
    assert len(names) == len(set(names)) == count and capsys.readouterr().out.strip() == text
    assert nonsense_names.nonsense_names(10) == nonsense_names.WORDS
    assert len(set(nonsense_names.nonsense_names(40))) == 40
    study = (REPO / "configs" / "studies" / "ordering.yaml").read_text()
    assert "[" + ", ".join(nonsense_names.WORDS) + "]" in study


def test_same_numbers_records_and_catches_a_moved_number(tmp_path, capsys):
    """The refactor gate: a recording equals itself, and one changed tensor in a client's state
    (below the resolution of accuracies) is reported as a difference."""
    import shutil

    import same_numbers
    import torch

    a, b = tmp_path / "a", tmp_path / "b"
    assert same_numbers.main(["record", "--out", str(a), "--cases", "smoke-promptfl"]) == 0
    shutil.copytree(a, b)
    assert same_numbers.main(["compare", str(a), str(b)]) == 0
    state_file = sorted((b / "smoke-promptfl" / "run" / "clients" / "0").glob("round_*.pt"))[-1]
    state = torch.load(state_file, weights_only=True)
    name = sorted(state["params"])[0]
    state["params"][name] = state["params"][name] + 1e-7
    torch.save(state, state_file)
    (b / "smoke-promptfl" / "numbers.json").write_text(json.dumps(same_numbers.numbers(b / "smoke-promptfl" / "run")))
    capsys.readouterr()
    assert same_numbers.main(["compare", str(a), str(b)]) == 1
    assert "smoke-promptfl: DIFFERS /clients/0" in capsys.readouterr().out


def test_gpu_smoke_records_each_method_and_precision_and_goes_on_past_a_failure(tmp_path, capsys):
    """The device script, run on the CPU: a passing case records its accuracy, a failing one its
    one-line error without stopping the rest; the rerun keeps what passed and exits 1 while any
    case fails."""
    import gpu_smoke

    out = tmp_path / "smoke.json"
    args = ["--out", str(out), "--accelerator", "cpu", "--methods", "promptfl", "--work", str(tmp_path / "w")]
    assert gpu_smoke.main([*args, "--precisions", "no-such-precision", "32-true"]) == 1
    runs = json.loads(out.read_text())["runs"]
    assert runs["promptfl|32-true"]["ok"] and 0.0 <= runs["promptfl|32-true"]["final_mean_acc"] <= 1.0
    assert not runs["promptfl|no-such-precision"]["ok"]
    assert "fabric.precision 'no-such-precision'" in runs["promptfl|no-such-precision"]["error"]
    first = runs["promptfl|32-true"]
    capsys.readouterr()
    assert gpu_smoke.main([*args, "--precisions", "32-true"]) == 1  # the recorded failure still counts
    assert json.loads(out.read_text())["runs"]["promptfl|32-true"] == first  # passed: not rerun
    assert "1 of 2 cases passed" in capsys.readouterr().out


def test_every_script_and_benchmark_imports_names_that_exist():
    """The diagnostics, evidence scripts and benchmarks run by hand, not in the suite: each one's
    imports from fedmoap name modules and objects that still exist (what rots first in a move)."""
    import ast
    import importlib

    files = sorted([*(REPO / "scripts").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")])
    assert any("diagnostics" in f.parts for f in files)
    checked = 0
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmoap"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        importlib.import_module(f"{node.module}.{alias.name}")  # a submodule
                    checked += 1
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("fedmoap"):
                        importlib.import_module(alias.name)
                        checked += 1
    assert checked > 50
