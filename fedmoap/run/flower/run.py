"""``fedmoap flower``: a run config as a Flower App, run in Flower's Simulation Engine.

    fedmoap flower --config run.yaml [--section.key value ...] --run_dir DIR
                   [--app APP_DIR] [--write_only] [--num_cpus N] [--client_cpus C] [--client_gpus G]

``--app`` writes a Flower App (:func:`write_app`: a ``pyproject.toml`` whose run config holds
these ``fedmoap fit`` arguments as typed keys, the config file beside it, the components module)
for ``flwr run`` on a deployment with SuperLink and SuperNodes; ``--write_only`` stops there.
Otherwise the run goes through ``flwr run`` (:func:`simulate`) on a SuperLink in simulation mode
that ``fedmoap flower`` starts and stops, Ray backend, one SuperNode per client
(``data.num_clients``), with ``--num_cpus`` CPUs for Ray (default: all) and ``--client_cpus`` /
``--client_gpus`` per running ClientApp (default 1 / 0); results.json, checkpoints and
TensorBoard land in ``--run_dir`` as with ``fedmoap fit``.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from fedmoap.errors import FedmoapError
from fedmoap.run.flower.checks import checked_config

__all__ = [
    "OPTIONS",
    "FLAGS",
    "split_args",
    "FIXED",
    "value_of",
    "overrides_of",
    "APP_MODULE",
    "toml_str",
    "write_app",
    "flwr_run_command",
    "simulate",
]

OPTIONS = {"--app": str, "--num_cpus": int, "--client_cpus": int, "--client_gpus": float}
FLAGS = {"--write_only"}


def split_args(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``fedmoap flower`` arguments -> (``fedmoap fit``'s arguments, the Flower options)."""
    fit_args, opts, i = [], {}, 0
    while i < len(argv):
        a = argv[i]
        key, _, inline = a.partition("=")
        if key in FLAGS:
            opts[key[2:]] = True
        elif key in OPTIONS:
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else None)
            if value is None:
                raise FedmoapError(f"{key} needs a value")
            i += 0 if inline else 1
            try:
                opts[key[2:]] = OPTIONS[key](value)
            except ValueError:
                kind = "an integer" if OPTIONS[key] is int else "a number"
                raise FedmoapError(f"{key} {value!r} is not {kind}") from None
            if isinstance(opts[key[2:]], float) and not math.isfinite(opts[key[2:]]):
                raise FedmoapError(f"{key} {value!r} is not a finite number")
        else:
            fit_args.append(a)
        i += 1
    for k in ("num_cpus", "client_cpus"):
        if k in opts and not opts[k] > 0:
            raise FedmoapError(f"--{k} must be > 0")
    if opts.get("client_gpus", 0) < 0:
        raise FedmoapError("--client_gpus must be >= 0")
    return fit_args, opts


FIXED = ("--config", "--run_dir", "--method", "--fed.rounds")
"""``fedmoap fit`` options a written app holds as typed run config keys (or sets per submission)."""


def value_of(fit_args: list[str], option: str) -> str | None:
    """The last value ``fit_args`` give ``option`` (``--key value`` or ``--key=value``), else None."""
    out = None
    for i, a in enumerate(fit_args):
        if a == option and i + 1 < len(fit_args):
            out = fit_args[i + 1]
        elif a.startswith(option + "="):
            out = a.partition("=")[2]
    return out


def overrides_of(fit_args: list[str]) -> list[str]:
    """``fit_args`` less the options in :data:`FIXED` (with their values)."""
    out, i = [], 0
    while i < len(fit_args):
        a = fit_args[i]
        if a in FIXED:
            i += 2
            continue
        if a.partition("=")[0] not in FIXED:
            out.append(a)
        i += 1
    return out


APP_MODULE = """\"\"\"This Flower App's ServerApp and ClientApp: fedmoap's, reading the config file beside
this module.\"\"\"

from pathlib import Path

from fedmoap.run.flower.app import client_app, server_app

HERE = Path(__file__).resolve().parent
SERVER_APP = server_app(HERE)
CLIENT_APP = client_app(HERE)
"""


def toml_str(value: str) -> str:
    """``value`` as a TOML basic string."""
    return json.dumps(value)


def write_app(app_dir: Path, fit_args: list[str], rounds: int) -> Path:
    """A Flower App in ``app_dir`` for ``fedmoap fit``'s arguments: ``pyproject.toml`` (the run config's
    typed keys: the config file, copied beside it and named relatively, ``num-server-rounds``,
    ``method``, the other overrides, ``runs-dir``: no absolute path of this machine), ``fedmoap_app.py``
    (the components, reading the config file beside them) and a Flower configuration
    ``.flwr/config.toml`` (outside the FAB) with a ``deployment`` SuperLink connection to edit.
    The run directory is ``<runs-dir>/<Flower run id>``: every submission is a new run. Returns
    the pyproject's path."""
    from fedmoap.run.flower.app import (
        CONFIG,
        DP_NORMS,
        METHOD,
        OVERRIDES,
        ROUNDS,
        RUN_DIR,
        RUNS_DIR,
        TRACE,
    )

    app_dir.mkdir(parents=True, exist_ok=True)
    config = value_of(fit_args, "--config")
    source = Path(config).expanduser() if config else None
    if source is not None and source.resolve() != (app_dir / source.name).resolve():
        shutil.copyfile(source, app_dir / source.name)
    method = value_of(fit_args, "--method") or ""
    project = f"""# Written by `fedmoap flower`: a fedmoap run as a Flower App.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedmoap-app"
version = "1.0.0"
description = "A fedmoap run as a Flower App"
license = "Apache-2.0"
# fedmoap[flower] must be installed where the ServerApp and the ClientApps run (start the
# SuperLink with --disable-runtime-dependency-installation): it is not on an index Flower installs from
dependencies = ["flwr[simulation]>=1.42"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedmoap"

[tool.flwr.app.components]
serverapp = "fedmoap_app:SERVER_APP"
clientapp = "fedmoap_app:CLIENT_APP"

# `flwr run --run-config 'key=value ...'` overrides any of these
[tool.flwr.app.config]
{CONFIG} = {toml_str(source.name if source is not None else "")}  # relative: beside this file
{ROUNDS} = {int(rounds)}
{METHOD} = {toml_str(method)}  # empty: the config file's
{OVERRIDES} = {toml_str(shlex.join(overrides_of(fit_args)))}
{RUN_DIR} = ""  # empty: <runs-dir>/<Flower run id>
{RUNS_DIR} = "runs"  # relative: to the SuperLink's working directory
{TRACE} = ""
{DP_NORMS} = false
"""
    connections = """# Flower configuration (FLWR_HOME) for the app beside it: `flwr run APP_DIR deployment`.
[superlink]
default = "deployment"

[superlink.deployment]
address = "127.0.0.1:8000"  # the SuperLink's HTTP API (flower-superlink --host/--port)
insecure = true
"""
    (app_dir / "fedmoap_app.py").write_text(APP_MODULE)
    (app_dir / ".flwr").mkdir(exist_ok=True)
    (app_dir / ".flwr" / "config.toml").write_text(connections)
    path = app_dir / "pyproject.toml"
    path.write_text(project)
    return path


def flwr_run_command(
    app_dir: Path,
    connection: str,
    num_supernodes: int | None = None,
    client_cpus: int = 1,
    client_gpus: float = 0.0,
    num_cpus: int | None = None,
    run_config: dict[str, Any] | None = None,
) -> list[str]:
    """``flwr run APP_DIR CONNECTION --stream`` with the simulation's federation config (with
    ``num_supernodes``) and run config overrides."""
    from fedmoap.run.flower.local import executable

    command = [executable("flwr"), "run", str(app_dir), connection, "--stream"]
    if num_supernodes is not None:
        fed = [
            f"num-supernodes={num_supernodes}",
            f"client-resources-num-cpus={client_cpus}",
            f"client-resources-num-gpus={client_gpus:g}",
        ]
        if num_cpus:
            fed.append(f"init-args-num-cpus={num_cpus}")
        command += ["--federation-config", " ".join(fed)]
    if run_config:
        items = [f"{k}={json.dumps(v) if not isinstance(v, str) else toml_str(v)}" for k, v in run_config.items()]
        command += ["--run-config", " ".join(items)]
    return command


def simulate(
    fit_args: list[str],
    num_cpus: int | None = None,
    client_cpus: int = 1,
    client_gpus: float = 0.0,
    dp_norms: bool = True,
    trace: Path | None = None,
    work: Path | None = None,
) -> Path:
    """Run ``fedmoap fit``'s arguments in Flower's Simulation Engine through ``flwr run``: the run
    written as a Flower App (:func:`write_app`), a SuperLink (``--simulation``) started on a port the
    OS picks and stopped at the end, one simulated SuperNode per client, the run directory given
    as the run config's ``run-dir``; returns the run directory. Bad input raises before anything
    starts; a run that ends without results raises with its last error line. ``dp_norms``: DP
    nodes send their norms before clipping (so results.json equals fit's); ``trace``: the
    ServerApp saves every message there; ``work``: where the app, the Flower home and the logs go
    (default: a temporary directory, removed)."""
    import subprocess
    import tempfile

    from fedmoap.run.flower.app import DP_NORMS, RUN_DIR, TRACE
    from fedmoap.run.flower.local import flower_env, free_port, start_superlink, stop, write_connection

    cfg, run_dir = checked_config(fit_args)
    run_dir = run_dir.expanduser().absolute()
    with tempfile.TemporaryDirectory(prefix="fedmoap-flower-") as tmp:
        root = Path(work) if work is not None else Path(tmp)
        app_dir, home = root / "app", root / "flwr-home"
        write_app(app_dir, fit_args, cfg.fed.rounds)
        port = free_port()
        write_connection(home, "local", port)
        link = start_superlink(home, port, simulation=True, log=root / "superlink.log", threads=cfg.fabric.threads)
        try:
            run_config: dict[str, Any] = {RUN_DIR: str(run_dir), DP_NORMS: bool(dp_norms)}
            if trace is not None:
                run_config[TRACE] = str(Path(trace).absolute())
            command = flwr_run_command(
                app_dir, "local", cfg.data.num_clients, client_cpus, client_gpus, num_cpus, run_config
            )
            proc = subprocess.run(
                command, env=flower_env(home, cfg.fabric.threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            out = proc.stdout.decode(errors="replace")
            sys.stdout.write(out)
            sys.stdout.flush()
        finally:
            stop(link)
    if not (run_dir / "results.json").exists():
        errors = [line.strip() for line in out.splitlines() if "fedmoap:" in line or "Error" in line]
        why = errors[-1] if errors else f"flwr run exited with {proc.returncode}"
        raise FedmoapError(f"the Flower run ended without results in {run_dir}: {why}")
    return run_dir
