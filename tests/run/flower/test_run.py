"""Starting a Flower run (fedmoap/run/flower/run.py): the options split from fit's arguments, and the
Flower App written for the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from tests.run.flower import SMOKE


def test_the_written_flower_app_names_the_apps_and_the_run(tmp_path):
    import tomllib

    app = tmp_path / "app"
    assert (
        main(
            [
                "flower",
                *SMOKE,
                "--method",
                "coop",
                "--run_dir",
                str(tmp_path / "run"),
                "--app",
                str(app),
                "--write_only",
                "--client_cpus",
                "2",
            ]
        )
        == 0
    )
    conf = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]
    assert conf["app"]["components"] == {
        "serverapp": "fedmoap.run.flower.app:SERVER_APP",
        "clientapp": "fedmoap.run.flower.app:CLIENT_APP",
    }
    args = json.loads(conf["app"]["config"]["fedmoap-args"])
    assert args[args.index("--run_dir") + 1] == str((tmp_path / "run").resolve())
    links = tomllib.loads((app / "flwr-home" / "config.toml").read_text())["superlink"]
    sim = links[links["default"]]["options"]
    assert sim["num-supernodes"] == 6 and sim["backend"]["client-resources"]["num-cpus"] == 2
    assert not (tmp_path / "run").exists()


def test_flower_options_are_split_from_fits_arguments():
    from fedmoap.run.flower.run import split_args

    fit, opts = split_args(["--config", "c.yaml", "--app=dir", "--num_cpus", "3", "--write_only", "--seed", "1"])
    assert fit == ["--config", "c.yaml", "--seed", "1"]
    assert opts == {"app": "dir", "num_cpus": 3, "write_only": True}
    assert split_args(["--client_cpus", "0.5", "--client_gpus=0"])[1] == {"client_cpus": 0.5, "client_gpus": 0.0}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_cpus"], "--num_cpus needs a value"),
        (["--num_cpus", "2.5"], "--num_cpus '2.5' is not an integer"),
        (["--client_cpus", "x"], "--client_cpus 'x' is not a number"),
        (["--client_cpus", "inf"], "--client_cpus 'inf' is not a finite number"),
        (["--client_cpus", "0"], "--client_cpus must be > 0"),
        (["--client_gpus", "-1"], "--client_gpus must be >= 0"),
    ],
)
def test_bad_flower_options_are_named(argv, message):
    from fedmoap.run.flower.run import split_args

    with pytest.raises(FedmoapError, match=f"^{message}$"):
        split_args(argv)


def test_the_app_reads_the_config_and_run_directory_from_anywhere(tmp_path, monkeypatch):
    from fedmoap.run.flower.run import absolute

    monkeypatch.chdir(tmp_path)
    args = absolute(["--config", "c.yaml", "--seed", "1", "--run_dir", "~/r"])
    assert args == ["--config", str(tmp_path / "c.yaml"), "--seed", "1", "--run_dir", str(Path("~/r").expanduser())]
