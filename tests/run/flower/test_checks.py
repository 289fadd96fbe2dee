"""What a Flower run accepts (fedmoap/run/flower/checks.py): the fabric one process per SuperNode,
a fresh run directory, and each refusal one line naming the key."""

from __future__ import annotations

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from tests.run.flower import SMOKE


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--eval.modes", "[local,unseen_clients]"], "eval.modes unseen_clients"),
        (["--eval.modes", "[local,global]"], "eval.modes global"),
        (["--fabric.devices", "2"], "fabric.devices 2"),
        (["--num_cpus", "0"], "--num_cpus"),
        (["--write_only"], "--write_only needs --app"),
        (["--dp.mode", "client_upload"], "dp.clip"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, culprit, tmp_path, capsys):
    assert main(["flower", *SMOKE, *args, "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and culprit in err, err
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_not_resumed_on_flower(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(["fit", *SMOKE, *cache, "--method", "coop", "--fed.rounds", "1", "--run_dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["flower", *SMOKE, *cache, "--method", "coop", "--fed.rounds", "1", "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "does not resume" in err and len(err.strip().splitlines()) == 1


def test_a_flower_node_is_one_process():
    from fedmoap.run.flower.checks import flower_problems
    from fedmoap.run.parse import parse_fit

    assert flower_problems(parse_fit(["fit", *SMOKE])[0].fabric) == []
    (problem,) = flower_problems(parse_fit(["fit", *SMOKE, "--fabric.num_nodes", "2"])[0].fabric)
    assert problem.startswith("fabric.devices 1 / fabric.num_nodes 2: on Flower each SuperNode is one process")


def test_a_flower_run_needs_a_fresh_run_directory(tmp_path):
    from fedmoap.run.flower.checks import checked_config

    with pytest.raises(FedmoapError, match="--run_dir is required for a Flower run"):
        checked_config(SMOKE)
    cfg, run_dir = checked_config([*SMOKE, "--run_dir", str(tmp_path / "run")])
    assert run_dir == tmp_path / "run" and cfg.fed.rounds == 2 and not run_dir.exists()
