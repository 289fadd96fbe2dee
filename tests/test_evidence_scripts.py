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
