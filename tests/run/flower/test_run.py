"""Starting a Flower run (fedmoap/run/flower/run.py, app.py): the options split from fit's arguments,
the Flower App written for the run, its typed run config keys and node config, each bad one a line."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from tests.run.flower import REPO, SMOKE


def test_the_written_flower_app_has_typed_keys_and_no_absolute_path(tmp_path):
    import tomllib

    app = tmp_path / "app"
    argv = ["flower", *SMOKE, "--method", "coop", "--run_dir", str(tmp_path / "run"), "--app", str(app)]
    assert main([*argv, "--write_only"]) == 0
    project = (app / "pyproject.toml").read_text()
    conf = tomllib.loads(project)["tool"]["flwr"]["app"]
    assert conf["components"] == {"serverapp": "fedmoap_app:SERVER_APP", "clientapp": "fedmoap_app:CLIENT_APP"}
    assert conf["config"] == {
        "config": "smoke.yaml",
        "num-server-rounds": 2,
        "method": "coop",
        "overrides": "--fabric.threads 1 --progress false",
        "run-dir": "",
        "runs-dir": "runs",
        "trace-dir": "",
        "fedmoap-dp-norms": False,
    }
    assert (app / "smoke.yaml").read_bytes() == (REPO / "configs" / "smoke.yaml").read_bytes()
    assert str(tmp_path) not in project and str(REPO) not in project  # nothing of this machine
    assert "options." not in (app / ".flwr" / "config.toml").read_text()  # no deprecated connection field
    assert not (tmp_path / "run").exists()


def test_the_run_config_makes_fits_arguments_with_the_run_directory_keyed_by_the_run_id(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from fedmoap.run.flower.app import settings_of

    (tmp_path / "c.yaml").write_text("seed: 1\n")
    monkeypatch.chdir(tmp_path)
    keys = {"config": "c.yaml", "num-server-rounds": 3, "method": "coop", "overrides": "--seed 2 --data.x 'a b'"}
    context = SimpleNamespace(run_config={**keys, "run-dir": "", "runs-dir": "out"}, run_id=42)
    assert settings_of(context, tmp_path) == [
        "--config",
        str(tmp_path / "c.yaml"),
        "--seed",
        "2",
        "--data.x",
        "a b",
        "--fed.rounds",
        "3",
        "--method",
        "coop",
        "--run_dir",
        str(tmp_path / "out" / "42"),
    ]
    again = SimpleNamespace(run_config={**keys, "runs-dir": "out"}, run_id=43)
    assert settings_of(again, tmp_path)[-1] == str(tmp_path / "out" / "43")  # a new submission, a new run
    named = SimpleNamespace(run_config={**keys, "run-dir": "r", "method": ""}, run_id=43)
    assert settings_of(named, tmp_path)[-3:] == ["3", "--run_dir", str(tmp_path / "r")]
    defaults = SimpleNamespace(run_config={"config": "", "num-server-rounds": 1}, run_id=44)  # fit's defaults
    assert settings_of(defaults, tmp_path) == ["--fed.rounds", "1", "--run_dir", str(tmp_path / "runs" / "44")]


@pytest.mark.parametrize(
    "run_config, message",
    [
        ({"config": "c.yaml", "rounds": 2}, "run config: unknown key 'rounds'"),
        ({"config": "c.yaml", "num-server-rounds": "2"}, "run config: num-server-rounds '2' is not an integer"),
        ({"config": "c.yaml", "num-server-rounds": True}, "run config: num-server-rounds True is not an integer"),
        ({"config": "c.yaml", "num-server-rounds": 0}, "run config: num-server-rounds 0 must be >= 1"),
        ({"config": "c.yaml", "method": 3}, "run config: method 3 is not a str"),
        ({"config": "c.yaml", "fedmoap-dp-norms": "yes"}, "run config: fedmoap-dp-norms 'yes' is not a bool"),
        ({"config": "nope.yaml"}, "run config: config 'nope.yaml': no such file"),
        ({"config": "c.yaml", "overrides": "--seed 'x"}, "run config: overrides .*: No closing quotation"),
    ],
)
def test_every_bad_run_config_key_is_one_line(run_config, message, tmp_path):
    from fedmoap.run.flower.app import run_settings

    (tmp_path / "c.yaml").write_text("seed: 1\n")
    with pytest.raises(FedmoapError, match=f"^{message}") as err:
        run_settings(run_config, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("partition", [None, "0", -1, True, 1.5])
def test_a_bad_partition_id_is_one_line_naming_the_node_config(partition, tmp_path):
    from types import SimpleNamespace

    from fedmoap.run.flower.app import node_of

    context = SimpleNamespace(node_config={} if partition is None else {"partition-id": partition}, run_id=1)
    with pytest.raises(FedmoapError, match=r"^node config: partition-id .* is not a client id \(an integer >= 0\)$"):
        node_of(context, ["--run_dir", str(tmp_path)])


def test_a_nodes_store_is_keyed_by_the_run_id_under_its_fedmoap_dir(tmp_path):
    from types import SimpleNamespace

    from fedmoap.run.flower.app import node_root

    args = ["--run_dir", str(tmp_path / "run")]
    assert node_root(SimpleNamespace(node_config={"fedmoap-dir": "/n/0"}, run_id=7), args) == Path("/n/0/7")
    assert node_root(SimpleNamespace(node_config={}, run_id=7), args) == tmp_path / "run" / "nodes"


def test_the_package_uses_flowers_current_api_only():
    """No deprecated simulation entry point anywhere in the package."""
    package = REPO / "fedmoap"
    assert not [p for p in package.rglob("*.py") if "run_simulation" in p.read_text()]


def test_flower_options_are_split_from_fits_arguments():
    from fedmoap.run.flower.run import split_args

    fit, opts = split_args(["--config", "c.yaml", "--app=dir", "--num_cpus", "3", "--write_only", "--seed", "1"])
    assert fit == ["--config", "c.yaml", "--seed", "1"]
    assert opts == {"app": "dir", "num_cpus": 3, "write_only": True}
    assert split_args(["--client_cpus", "2", "--client_gpus=0.5"])[1] == {"client_cpus": 2, "client_gpus": 0.5}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_cpus"], "--num_cpus needs a value"),
        (["--num_cpus", "2.5"], "--num_cpus '2.5' is not an integer"),
        (["--client_cpus", "x"], "--client_cpus 'x' is not an integer"),
        (["--client_cpus", "0.5"], "--client_cpus '0.5' is not an integer"),
        (["--client_gpus", "inf"], "--client_gpus 'inf' is not a finite number"),
        (["--client_cpus", "0"], "--client_cpus must be > 0"),
        (["--client_gpus", "-1"], "--client_gpus must be >= 0"),
    ],
)
def test_bad_flower_options_are_named(argv, message):
    from fedmoap.run.flower.run import split_args

    with pytest.raises(FedmoapError, match=f"^{message}$"):
        split_args(argv)
