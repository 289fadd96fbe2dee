"""``fedmoap sweep``: knobs go only to the methods that have them (no duplicate runs), every line
parses, run directories are distinct, bad grid keys are refused."""

import shlex
from pathlib import Path

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from fedmoap.run.parse import parse_fit
from fedmoap.run.sweep import parse_grid, sweep_lines, write_sweep

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")


def configs(lines):
    return [parse_fit(["fit", *shlex.split(line)]) for line in lines]


@pytest.mark.parametrize("knob", ["pfedmoap.lam", "method.lam"])
def test_knobs_of_one_method_do_not_multiply_the_others(knob):
    lines = sweep_lines(SMOKE, parse_grid(["method=promptfl,pfedmoap", f"{knob}=0,0.5"]), [0, 1], "runs/s")
    assert len(lines) == 2 * 3  # promptfl once, pfedmoap with lam 0 and 0.5, per seed
    parsed = configs(lines)
    methods = sorted((type(c.method).__name__, getattr(c.method, "lam", None), c.seed) for c, _, _ in parsed)
    assert methods == sorted(
        [("PromptFL", None, s) for s in (0, 1)] + [("PFedMoAP", lam, s) for lam in (0.0, 0.5) for s in (0, 1)]
    )
    dirs = [run_dir for _, run_dir, _ in parsed]
    assert len(set(dirs)) == len(dirs)


def test_colliding_names_get_distinct_directories():
    lines = sweep_lines(None, parse_grid(["data.source=x/cifar,x_cifar"]), [0], "runs/s")
    dirs = [shlex.split(line)[-1] for line in lines]
    assert len(set(dirs)) == 2


def test_bad_grid_key_is_refused_before_the_file_is_written(tmp_path, capsys):
    out = tmp_path / "sweep.txt"
    assert main(["sweep", "--config", SMOKE, "--grid", "fed.roundz=3", "--out", str(out)]) == 2
    assert "roundz" in capsys.readouterr().err and not out.exists()
    with pytest.raises(FedmoapError, match="method.heads"):
        write_sweep(str(out), SMOKE, ["method.heads=0"], [0], "runs/s")
    assert write_sweep(str(out), SMOKE, ["method=coop,promptfl"], [0], "runs/s") == 2
