"""Studies (``configs/studies/*.yaml``, ``fedmoap sweep --study``, ``fedmoap report --study``):
a tiny study runs in this process, shares each (split, seed)'s split between its variants, moves
no number against a plain ``fedmoap fit``, resumes without work, and its table is the mean ±
sample std of the runs' results.json; bad study files are refused in one line before anything is
written; the SLURM array's lines are ``fedmoap fit`` argument lines."""

from __future__ import annotations

import json
import shlex
import statistics
import subprocess
from pathlib import Path

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from fedmoap.run.parse import parse_fit
from fedmoap.run.studies.format import load_study
from fedmoap.run.studies.table import record_table

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def tiny_study(tmp_path: Path, **changes) -> Path:
    """2 variants x 1 split x 2 seeds of the smoke config, 2 rounds each."""
    study = {
        "name": "tiny",
        "description": "two methods on the smoke config",
        "base": {"config": SMOKE, "fed.rounds": 2, "fabric.threads": 1, "data.feature_cache": str(tmp_path / "cache")},
        "splits": {"dir": {"data.alpha": 0.5}},
        "seeds": [0, 1],
        "variants": {
            "PromptFL": {"key": "promptfl", "overrides": {"method": "promptfl"}},
            "pFedMoAP (smoke knobs)": {"key": "pfedmoap"},
        },
    }
    study.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(study))  # JSON is YAML
    return path


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def accs(run_dir: Path) -> list:
    return [{c: v["acc"] for c, v in r["clients"].items()} for r in results(run_dir)["rounds"]]


def test_a_study_runs_shares_splits_resumes_and_reports(tmp_path, capsys):
    path, out = tiny_study(tmp_path), tmp_path / "out"
    assert main(["sweep", "--study", str(path), "--run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cells = [f"dir/seed{s}/{k}" for s in (0, 1) for k in ("promptfl", "pfedmoap")]
    assert [line.split(":")[0] for line in printed.splitlines()[:4]] == cells
    for seed in (0, 1):  # the first variant makes the split, the second reads it
        first, second = out / "dir" / f"seed{seed}" / "promptfl", out / "dir" / f"seed{seed}" / "pfedmoap"
        stored = [parse_fit(["fit", "--config", str(d / "config.yaml")])[0].data.split_file for d in (first, second)]
        assert stored == [None, str(first / "split.json")]
        splits = [json.loads((d / "split.json").read_text())["clients"] for d in (first, second)]
        assert splits[0] == splits[1]
    # one backbone for every fit and a split read from file: the numbers of a plain fit
    alone = tmp_path / "alone"
    assert (
        main(
            [
                "fit",
                "--config",
                SMOKE,
                "--fed.rounds",
                "2",
                "--fabric.threads",
                "1",
                "--data.alpha",
                "0.5",
                "--data.feature_cache",
                str(tmp_path / "cache"),
                "--seed",
                "1",
                "--run_dir",
                str(alone),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    assert accs(alone) == accs(out / "dir" / "seed1" / "pfedmoap")
    # a second run does no work
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    capsys.readouterr()
    assert main(["sweep", "--study", str(path), "--run", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert again.count("finished earlier") == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out} == before
    # the report: mean ± sample std over seeds of the runs' own numbers, in %
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for label, key in (("PromptFL", "promptfl"), ("pFedMoAP (smoke knobs)", "pfedmoap")):
        finals = [results(out / "dir" / f"seed{s}" / key)["summary"]["final_mean_acc"] for s in (0, 1)]
        expected = f"{100 * statistics.mean(finals):.2f} ± {100 * statistics.stdev(finals):.2f}"
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
        assert expected in row, (expected, row)
    record = json.loads((out / "tiny.json").read_text())
    assert [r["seed"] for r in record["rows"]["PromptFL"]["dir"]] == [0, 1]
    assert all(r["seconds"] > 0 for r in record["rows"]["PromptFL"]["dir"])
    assert (out / "tiny.md").read_text().count("| PromptFL |") == 1
    # its figure: each row's mean per round over the seeds, from the record's curves
    cell = record["rows"]["PromptFL"]["dir"][0]
    assert [r for r, _ in cell["curve"]] == [1, 2] and cell["curve"][-1][1] == pytest.approx(cell["final"])
    assert main(["report", "--study", str(path), "--out", str(out), "--plot", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["report", "--study", str(path), "--out", str(out), "--plot", str(tmp_path / "fig.txt")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"fedmoap: error: --plot {tmp_path / 'fig.txt'}: not a figure file (.png, .svg, .pdf)"
    )
    assert not (tmp_path / "fig.txt").exists()
    # the record names what made it, and alone makes the same table (the one the docs show)
    assert set(record["provenance"]) >= {"commit", "machine", "threads", "written"}
    assert record_table(load_study(path), out / "tiny.json") == table.rstrip("\n")
    changed = json.loads((out / "tiny.json").read_text())
    changed["rows"]["PromptFL"]["dir"][1]["config_digest"] = "0" * 16
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(FedmoapError, match="1 cells with another config digest, 0 cells missing"):
        record_table(load_study(path), tmp_path / "changed.json")
    changed["rows"]["PromptFL"]["dir"][1]["config_digest"] = None  # a record from before digests
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    assert record_table(load_study(path), tmp_path / "changed.json") == table.rstrip("\n")
    # a run directory that is gone: the cell is missing, unless an earlier record of the same
    # configuration stands in for it; a record of another configuration does not
    earlier = tmp_path / "earlier.json"
    earlier.write_text((out / "tiny.json").read_text())
    rows = [line for line in table.splitlines() if line.startswith("| pFedMoAP")]
    (out / "dir" / "seed1" / "pfedmoap" / "results.json").unlink()
    assert main(["report", "--study", str(path), "--out", str(out)]) == 0
    assert "(1 of 2 seeds)" in capsys.readouterr().out
    assert main(["report", "--study", str(path), "--out", str(out), "--recorded", str(earlier)]) == 0
    again = capsys.readouterr().out
    assert [line for line in again.splitlines() if line.startswith("| pFedMoAP")] == rows
    assert "1 of the cells above are taken from" in again
    assert json.loads((out / "tiny.json").read_text())["rows"]["pFedMoAP (smoke knobs)"]["dir"][1]["recorded"] == str(
        earlier
    )
    other = json.loads(earlier.read_text())
    other["rows"]["pFedMoAP (smoke knobs)"]["dir"][1]["config_digest"] = "0" * 16
    other["rows"]["PromptFL"]["dir"][0]["config_digest"] = "0" * 16  # its run directory is there
    earlier.write_text(json.dumps(other))
    assert main(["report", "--study", str(path), "--out", str(out), "--recorded", str(earlier)]) == 0
    again = capsys.readouterr().out
    assert "(1 of 2 seeds)" in again
    assert "0 of the cells above are taken from" in again and "; 1 recorded cells with another digest" in again
    earlier.write_text("[]")
    assert main(["report", "--study", str(path), "--out", str(out), "--recorded", str(earlier)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fedmoap: error: report: --recorded {earlier} is not a study record "
        "(list indices must be integers or slices, not str)"
    )


def test_the_slurm_array_is_fit_argument_lines(tmp_path, capsys):
    path, out = tiny_study(tmp_path, seeds=[0, 1, 2]), tmp_path / "out"
    study = load_study(path)
    assert main(["sweep", "--study", str(path), "--slurm", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = (out / "tiny.sweep.txt").read_text().splitlines()
    assert len(lines) == 6 and "--dependency=afterok" in printed and "--array=3-5" in printed
    cells = {str(c.run_dir): c for c in study.cells(out)}
    for i, line in enumerate(lines):
        cfg, run_dir, _ = parse_fit(["fit", *shlex.split(line)])
        cell = cells.pop(run_dir)
        assert cell.writes_split == (i < 3) and cfg.seed == cell.seed
        # slurm/array.sbatch reads the line with `eval "set -- $LINE"`
        argv = subprocess.run(
            ["bash", "-c", f'eval "set -- {line}"; printf "%s\\n" "$@"'], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        assert argv == shlex.split(line)
    assert not cells


BAD = {  # file changes -> words the one-line error must hold
    "unknown_key": ({"tabel": {}}, ["tiny.yaml", "tabel"]),
    "bad_config_key": ({"splits": {"dir": {"fed.roundz": 3}}}, ["tiny.yaml", "splits.dir", "roundz"]),
    "bad_value": (
        {"variants": {"A": {"key": "a", "overrides": {"method": "promptfl", "fed.rounds": "x"}}}},
        ["tiny.yaml", "variants.A", "fed.rounds"],
    ),
    "refused_by_fit": (
        {"variants": {"A": {"key": "a", "overrides": {"train.lr": -1}}}},
        ["tiny.yaml", "variants.A", "lr"],
    ),
    "unknown_method_knob": (
        {"variants": {"A": {"key": "a", "overrides": {"method": "promptfl", "method.lam": 0}}}},
        ["tiny.yaml", "variants.A", "lam"],
    ),
    "variant_without_key": ({"variants": {"A": {"overrides": {}}}}, ["tiny.yaml", "variants.A.key"]),
    "seeds_outside": ({"variants": {"A": {"key": "a", "seeds": [7]}}}, ["tiny.yaml", "variants.A.seeds"]),
    "seed_override": ({"base": {"seed": 3}}, ["tiny.yaml", "base.seed"]),
    "missing_config": ({"variants": {"A": {"key": "a", "config": "nope.yaml"}}}, ["tiny.yaml", "variants.A.config"]),
    "same_key_twice": ({"variants": {"A": {"key": "a"}, "B": {"key": "a"}}}, ["tiny.yaml", "variants.B.key"]),
    "table_metric": ({"table": {"metrics": ["best"]}}, ["tiny.yaml", "table.metrics"]),
    "not_yaml": (None, ["tiny.yaml", "YAML"]),
    "held_setting_differs": (
        {
            "holds_constant": ["train.lr"],
            "variants": {"A": {"key": "a"}, "B": {"key": "b", "overrides": {"train.lr": 0.5}}},
        },
        ["tiny.yaml", "holds_constant: train.lr", "'B': 0.5"],
    ),
    "holds_constant_not_a_list": ({"holds_constant": "train.lr"}, ["tiny.yaml", "holds_constant", "not a list"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_study_files_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    changes, words = BAD[case]
    path, out = tiny_study(tmp_path, **(changes or {})), tmp_path / "out"
    if changes is None:
        path.write_text("name: tiny\nvariants: [a: b\n")
    for mode in ("--run", "--slurm", "--list"):
        capsys.readouterr()
        assert main(["sweep", "--study", str(path), mode, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("fedmoap: error:") and "\n" not in err, err
        assert all(w in err for w in words), (words, err)
        assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_row_that_differs_beyond_its_method_is_listed_and_marked(tmp_path, capsys):
    """--list names each row's settings that differ from the others' (the method's resolved
    optimizer-state policy and classifier included); a row that differs beyond its method's knobs
    is marked, one that differs only in its knobs is not."""
    variants = {
        "PromptFL": {"key": "promptfl", "overrides": {"method": "promptfl"}},
        "PromptFL, its momentum kept": {
            "key": "promptfl-keep",
            "overrides": {"method": "promptfl", "train.optimizer_state": "keep"},
        },
        "PromptFL, 8 tokens": {"key": "promptfl8", "overrides": {"method": "promptfl", "method.n_ctx": 8}},
        "PromptFL, lr 0.5": {"key": "promptfl-lr", "overrides": {"method": "promptfl", "train.lr": 0.5}},
        "KgCoOp": {"key": "kgcoop", "overrides": {"method": "kgcoop"}},
    }
    path = tiny_study(tmp_path, variants=variants)
    assert main(["sweep", "--study", str(path), "--list", "--out", str(tmp_path / "out")]) == 0
    rows = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("- ")}
    assert rows["- PromptFL"].endswith(": none") and rows["- PromptFL, its momentum kept"].endswith(": none")
    assert rows["- PromptFL, 8 tokens"].endswith(": method.n_ctx 8")
    assert "†" in rows["- PromptFL, lr 0.5 †"] and rows["- PromptFL, lr 0.5 †"].endswith("train.lr 0.5")
    assert "optimizer state reset" in rows["- KgCoOp †"]
    assert not (tmp_path / "out").exists()


def test_set_only_takes_settings_that_keep_the_numbers(tmp_path, capsys):
    path, out = tiny_study(tmp_path), tmp_path / "out"
    assert main(["sweep", "--study", str(path), "--list", "--out", str(out), "--set", "train.lr=0.1"]) == 2
    assert "--set train.lr" in capsys.readouterr().err
    assert (
        main(
            [
                "sweep",
                "--study",
                str(path),
                "--list",
                "--out",
                str(out),
                "--set",
                "fabric.threads=2",
                "--only",
                "pfedmoap",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    listed = [line for line in printed if "fedmoap fit" in line]
    assert len(listed) == 2 and all("--fabric.threads 2" in line and "[new]" in line for line in listed)
    assert printed[0].startswith("Settings every row shares unless listed: optimizer state keep")
    # its split is made by the variant left out, which has not run
    assert main(["sweep", "--study", str(path), "--run", "--out", str(out), "--only", "pfedmoap"]) == 2
    assert "add it to --only" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_committed_studies_load_and_name_distinct_run_directories(path, monkeypatch):
    """Every committed study is a valid study whose cells parse as `fedmoap fit` runs (their config
    paths are from the repository root)."""
    monkeypatch.chdir(REPO)
    study = load_study(path.relative_to(REPO))
    assert study.name == path.stem
    cells = study.cells("runs/x")
    assert len({c.run_dir for c in cells}) == len(cells) == sum(len(v.seeds) * len(v.splits) for v in study.variants)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_cell_of_a_committed_study_validates(path, monkeypatch):
    """Every cell passes the checks of ``fedmoap fit``, the combinations a method refuses included
    (e.g. PromptSRC's GPA peak, a round number, must be a round of the cell)."""
    from fedmoap.run.validate import validate

    monkeypatch.chdir(REPO)
    for cell in load_study(path.relative_to(REPO)).cells("runs/x"):
        validate(cell.cfg)


def test_the_cpu_vision_study_is_the_gpu_one_with_fewer_rounds(monkeypatch):
    """vision_methods_cpu.yaml is vision_methods.yaml with 4 rounds instead of 10 (and PromptSRC's
    GPA peak at 0.75 x the rounds): same splits, seeds, variants and every other setting."""
    monkeypatch.chdir(REPO)
    gpu = load_study("configs/studies/vision_methods.yaml")
    cpu = load_study("configs/studies/vision_methods_cpu.yaml")
    assert (gpu.base.pop("fed.rounds"), cpu.base.pop("fed.rounds")) == (10, 4)
    assert cpu.base == gpu.base and cpu.splits == gpu.splits and cpu.seeds == gpu.seeds
    assert cpu.metrics == gpu.metrics
    src = {s.name: s.variant("promptsrc").overrides.pop("method.gpa_mean") for s in (gpu, cpu)}
    assert src == {"vision_methods": 7.5, "vision_methods_cpu": 3}
    for g, c in zip(gpu.variants, cpu.variants, strict=True):
        assert (g.key, g.config, g.overrides, g.seeds, g.splits) == (c.key, c.config, c.overrides, c.seeds, c.splits)
