"""``fedmoap sweep --config C --grid ...``: a grid is a study (fedmoap/run/studies/grid.py). Knobs go
only to the methods that have them (no duplicate runs), every listed cell parses as ``fedmoap fit``
would, run directories are distinct, ``data.*`` keys make the splits, bad grids are refused in one
line, and a grid runs, resumes and is reported like any study."""

import shlex
from pathlib import Path

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from fedmoap.run.parse import parse_fit
from fedmoap.run.studies.grid import grid_study

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


def listed(capsys, out, *grid, seeds=("0",)):
    """``fedmoap sweep --config SMOKE --grid GRID --seeds SEEDS --list``: (run dir, fit arguments) per cell."""
    capsys.readouterr()
    assert main(["sweep", "--config", SMOKE, "--grid", *grid, "--seeds", *seeds, "--list", "--out", str(out)]) == 0
    cells = []
    for line in capsys.readouterr().out.splitlines():
        if "  fedmoap fit " not in line:
            continue  # the rows' settings above the cells
        run_dir, _, args = line.partition("  fedmoap fit ")
        cells.append((run_dir.split()[0], shlex.split(args)))
    return cells


@pytest.mark.parametrize("knob", ["pfedmoap.lam", "method.lam"])
def test_knobs_of_one_method_do_not_multiply_the_others(knob, capsys, tmp_path):
    cells = listed(capsys, tmp_path, "method=promptfl,pfedmoap", f"{knob}=0,0.5", seeds=("0", "1"))
    assert len(cells) == 2 * 3  # promptfl once, pfedmoap with lam 0 and 0.5, per seed
    parsed = [parse_fit(["fit", *args]) for _, args in cells]
    methods = sorted((type(c.method).__name__, getattr(c.method, "lam", None), c.seed) for c, _, _ in parsed)
    assert methods == sorted(
        [("PromptFL", None, s) for s in (0, 1)] + [("PFedMoAP", lam, s) for lam in (0.0, 0.5) for s in (0, 1)]
    )
    dirs = [run_dir for _, run_dir, _ in parsed]
    assert dirs == [d for d, _ in cells] and len(set(dirs)) == len(dirs)
    assert not any(tmp_path.iterdir())  # --list writes nothing


def test_data_keys_make_the_splits_and_the_variants_of_a_split_share_it(capsys, tmp_path):
    study = grid_study(SMOKE, ["method=promptfl,pfedmoap", "data.alpha=0.1,0.5"], [0], tmp_path)
    assert study.splits == {"alpha0.1": {"data.alpha": "0.1"}, "alpha0.5": {"data.alpha": "0.5"}}
    assert [v.key for v in study.variants] == ["methodpromptfl", "methodpfedmoap"]
    assert study.base == {"config": SMOKE} and study.default_out() == tmp_path
    cells = listed(capsys, tmp_path, "method=promptfl,pfedmoap", "data.alpha=0.1,0.5")
    keys = ("methodpromptfl", "methodpfedmoap")
    assert [d for d, _ in cells] == [str(tmp_path / s / "seed0" / v) for s in ("alpha0.1", "alpha0.5") for v in keys]
    for k, (run_dir, args) in enumerate(cells):
        writer = str(Path(run_dir).parent / "methodpromptfl" / "split.json")
        assert ("--data.split_file" in args) == (k % 2 == 1)
        assert k % 2 == 0 or args[args.index("--data.split_file") + 1] == writer


def test_no_grid_is_one_variant_per_seed_and_colliding_names_are_told_apart(tmp_path):
    study = grid_study(SMOKE, [], [0, 1, 2])
    assert [v.key for v in study.variants] == ["base"] and list(study.splits) == ["base"]
    assert len(study.cells(tmp_path)) == 3 and study.default_out() == Path("runs") / "sweep"
    names = list(grid_study(None, ["data.source=x/cifar,x_cifar"], [0]).splits)
    assert len(set(names)) == 2 and names[0] == "sourcex_cifar"
    # duplicate points collapse; a value's dots are kept (lam 0.5 and 1.5 are two names)
    study = grid_study(SMOKE, ["method.lam=0.5,1.5,0.5"], [0])
    assert [v.key for v in study.variants] == ["lam0.5", "lam1.5"]
    assert [v.label for v in study.variants] == ["method.lam=0.5", "method.lam=1.5"]


@pytest.mark.parametrize(
    "grid, words",
    [
        (["fed.roundz=3"], ["roundz"]),
        (["method.heads=0"], ["method.heads"]),
        (["fed.rounds"], ["'fed.rounds'", "KEY=V1,V2"]),
        (["method=promptfl,bogus"], ["unknown method 'bogus'"]),
        (["method=promptfl,coop", "pfedmoap.lam=0,0.5"], ["pfedmoap.lam", "'lam'"]),
        (["method.nonesuch=1"], ["method.nonesuch", "no method of the grid"]),
        (["seed=0,1"], ["seed", "--seeds"]),
    ],
)
def test_bad_grid_is_one_line_and_writes_nothing(grid, words, capsys, tmp_path):
    out = tmp_path / "sweep"
    capsys.readouterr()
    assert main(["sweep", "--config", SMOKE, "--grid", *grid, "--seeds", "0", "--slurm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmoap: error:") and err.strip().count("\n") == 0, err
    for word in words:
        assert word in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--config", "no/such.yaml", "--list"], ["--config no/such.yaml"]),
        (["--study", "x.yaml", "--grid", "fed.rounds=1", "--list"], ["--study", "not both"]),
        (["--config", SMOKE, "--grid", "fed.rounds=1"], ["--run, --slurm, --list"]),
        (["--list"], ["--study FILE", "--grid"]),
    ],
)
def test_bad_command_lines(argv, words, capsys):
    capsys.readouterr()
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and all(w in err for w in words), err


def test_slurm_writes_the_split_writers_first(capsys, tmp_path):
    capsys.readouterr()
    grid = ["--grid", "method=coop,promptfl", "data.alpha=0.1,0.5"]
    assert main(["sweep", "--config", SMOKE, *grid, "--seeds", "0", "1", "--slurm", "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "grid.sweep.txt").read_text().splitlines()
    assert len(lines) == 8 and ["--data.split_file" in line for line in lines] == [False] * 4 + [True] * 4
    assert "--array=0-3" in capsys.readouterr().out
    for line in lines:
        parse_fit(["fit", *shlex.split(line)])


def test_a_grid_runs_resumes_and_reports_like_a_study(capsys, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--config", SMOKE, "--grid", "method=promptfl,pfedmoap", "fed.rounds=1"]
    argv += ["--seeds", "0", "--out", str(out), "--set", "fabric.threads=1"]
    assert main([*argv, "--run"]) == 0
    table = capsys.readouterr().out
    dirs = [out / "base" / "seed0" / key for key in ("methodpromptfl-rounds1", "methodpfedmoap-rounds1")]
    assert all((d / "results.json").is_file() for d in dirs)
    assert f"split_file: {dirs[0] / 'split.json'}" in (dirs[1] / "config.yaml").read_text()  # one split
    assert "| method=promptfl fed.rounds=1 |" in table and (out / "grid.md").is_file()
    assert main([*argv, "--run"]) == 0 and capsys.readouterr().out.count("finished earlier") == 2
    assert main(["report", str(out)]) == 0
    report = capsys.readouterr().out
    assert "promptfl" in report and "pfedmoap" in report


def test_grid_study_refuses_a_bad_value_when_its_cells_are_planned(tmp_path):
    study = grid_study(SMOKE, ["method.heads=0"], [0])
    with pytest.raises(FedmoapError, match="method.heads"):
        study.cells(tmp_path)
