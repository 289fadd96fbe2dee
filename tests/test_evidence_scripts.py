"""The evidence scripts' run matrices parse, name distinct run directories, and render the
committed evidence (scripts are not run by CI: their runs take minutes to hours)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import seed_evidence  # noqa: E402
from fedmoap.cli import parse_fit  # noqa: E402


def test_seed_evidence_matrix_parses_with_distinct_run_dirs(tmp_path):
    dirs = set()
    for split, split_args in seed_evidence.SPLITS.items():
        for name, method_args in seed_evidence.METHODS.items():
            cfg, _, _ = parse_fit(["fit", *seed_evidence.COMMON, *split_args, *method_args, "--seed", "0"])
            assert cfg.model.arch == "packaged-vit" and cfg.method.name == method_args[1]
            dirs.add(seed_evidence.run_dir(tmp_path, split, name, 0))
    assert len(dirs) == len(seed_evidence.SPLITS) * len(seed_evidence.METHODS)


def test_seed_evidence_tables_render_every_committed_run():
    done = json.loads((REPO / "evidence" / "2026-11-23-seed-evidence.json").read_text())
    text = seed_evidence.tables(done, [0, 1, 2])
    names = {e["method"] for e in done.values()}
    assert names == set(seed_evidence.METHODS)
    for name in names:
        assert f"| {name} |" in text
    assert "(45 runs" in text  # per split: 15 methods and ablations x 3 seeds


def test_ordering_study_runs_on_another_dataset_with_meaningless_names(tmp_path):
    """The ordering study on a dataset of the user's (here the synthetic source on the tiny
    model): one meaningless word per class of that dataset, every variant run on one split."""
    import ordering
    from fedmoap.data.sources import load_source

    user = ["--model.arch", "fedmoap-tiny-vit", "--data.source", "synthetic", "--fed.rounds", "1",
            "--train.local_epochs", "1", "--data.shots", "2", "--data.max_test_per_client", "6",
            "--data.num_clients", "2", "--data.feature_cache", str(tmp_path / "cache"), "--fabric.threads", "1"]
    result = ordering.main(["--out", str(tmp_path / "out"), "--seeds", "0", "--variants", "zeroshot", "coop",
                            "--", *user])
    cfg, _, _ = parse_fit(["fit", *user])
    count = len(load_source(cfg.data).classnames)
    names = result["setting"][1]
    assert result["setting"][0] == "--data.classnames" and len(names.strip("[]").split(", ")) == count
    assert set(result["variants"]) == {"zeroshot", "coop"}
    splits = {json.dumps(json.loads((tmp_path / "out" / v / "seed0" / "split.json").read_text())["clients"])
              for v in ("zeroshot", "coop")}
    assert len(splits) == 1
    assert ordering.nonsense_names(10) == ordering.WORDS  # the committed evidence's names


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
    (b / "smoke-promptfl" / "numbers.json").write_text(
        json.dumps(same_numbers.numbers(b / "smoke-promptfl" / "run")))
    capsys.readouterr()
    assert same_numbers.main(["compare", str(a), str(b)]) == 1
    assert "smoke-promptfl: DIFFERS /clients/0" in capsys.readouterr().out
