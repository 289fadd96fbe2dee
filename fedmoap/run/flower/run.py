"""``fedmoap flower``: a run config as a Flower App, run in Flower's Simulation Engine.

    fedmoap flower --config run.yaml [--section.key value ...] --run_dir DIR
                   [--app APP_DIR] [--write_only] [--num_cpus N] [--client_cpus C] [--client_gpus G]

``--app`` writes a Flower App (a ``pyproject.toml`` whose components are
:mod:`fedmoap.run.flower.app`'s ServerApp and ClientApp and whose run config holds these ``fedmoap
fit`` arguments) and a Flower configuration for ``flwr run`` (:func:`write_app`), locally or on
a deployment with SuperLink and SuperNodes; ``--write_only`` stops there. Otherwise the run goes
through ``flwr.simulation.run_simulation`` on the Ray backend, one SuperNode per client
(``data.num_clients``), with ``--num_cpus`` CPUs for Ray (default: all) and ``--client_cpus`` /
``--client_gpus`` per running ClientApp (default 1 / 0); results.json, checkpoints and
TensorBoard land in ``--run_dir`` as with ``fedmoap fit``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from fedmoap.errors import FedmoapError
from fedmoap.run.flower.app import DP_NORMS, SETTINGS
from fedmoap.run.flower.checks import checked_config

__all__ = ["OPTIONS", "FLAGS", "split_args", "absolute", "write_app", "simulate"]

OPTIONS = {"--app": str, "--num_cpus": int, "--client_cpus": float, "--client_gpus": float}
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


def absolute(fit_args: list[str]) -> list[str]:
    """``fit_args`` with the config file and run directory as absolute paths (a Flower App runs
    from elsewhere)."""
    out = list(fit_args)
    for i, a in enumerate(out[:-1]):
        if a in ("--config", "--run_dir"):
            out[i + 1] = str(Path(out[i + 1]).expanduser().resolve())
    return out


def write_app(
    app_dir: Path, fit_args: list[str], num_clients: int, client_cpus: float = 1.0, client_gpus: float = 0.0
) -> Path:
    """A Flower App in ``app_dir`` for this run (``pyproject.toml``) and a Flower configuration
    beside it (``flwr-home/config.toml``) with two SuperLink connections: ``fedmoap-simulation``
    (a local Simulation Engine, one SuperNode per client) and ``deployment`` (a SuperLink's
    Control API address to edit). ``FLWR_HOME=APP_DIR/flwr-home flwr run APP_DIR`` runs the
    first; returns the pyproject's path."""
    app_dir.mkdir(parents=True, exist_ok=True)
    args = json.dumps(absolute(fit_args))
    project = f"""# Written by `fedmoap flower`: the fedmoap run below as a Flower App.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedmoap-app"
version = "1.0.0"
# fedmoap[flower] must be installed where the ServerApp and the ClientApps run: it is not on an
# index `flwr run` could install it from (Flower skips flwr itself)
dependencies = ["flwr[simulation]>=1.42"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedmoap"

[tool.flwr.app.components]
serverapp = "fedmoap.run.flower.app:SERVER_APP"
clientapp = "fedmoap.run.flower.app:CLIENT_APP"

[tool.flwr.app.config]
{SETTINGS} = {json.dumps(args)}
{DP_NORMS} = false
"""
    connections = f"""# Flower configuration (FLWR_HOME) for the app beside it: `flwr run APP_DIR [CONNECTION]`.
[superlink]
default = "fedmoap-simulation"

[superlink.fedmoap-simulation]
address = ":local:"
options.num-supernodes = {num_clients}
options.backend.client-resources.num-cpus = {client_cpus:g}
options.backend.client-resources.num-gpus = {client_gpus:g}

[superlink.deployment]
address = "127.0.0.1:8000"  # the SuperLink's HTTP API (flower-superlink --host/--port)
insecure = true
"""
    (app_dir / "flwr-home").mkdir(exist_ok=True)
    (app_dir / "flwr-home" / "config.toml").write_text(connections)
    path = app_dir / "pyproject.toml"
    path.write_text(project)
    return path


def simulate(
    fit_args: list[str],
    num_cpus: int | None = None,
    client_cpus: float = 1.0,
    client_gpus: float = 0.0,
    watch: Callable | None = None,
    done: Callable | None = None,
    dp_norms: bool = True,
) -> Path:
    """Run ``fedmoap fit``'s arguments in Flower's Simulation Engine (Ray backend), one SuperNode
    per client; returns the run directory. Bad input raises before anything starts. ``watch`` and
    ``done``: :func:`~fedmoap.run.flower.app.server_app`'s. ``dp_norms``: DP nodes send their norms
    before clipping (:data:`~fedmoap.run.flower.app.DP_NORMS`), so results.json equals fit's."""
    import warnings

    cfg, run_dir = checked_config(fit_args)
    fit_args = absolute(fit_args)
    from flwr.simulation import run_simulation

    from fedmoap.run.flower.app import client_app, server_app

    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if num_cpus:
        init["num_cpus"] = num_cpus
    backend = {"client_resources": {"num_cpus": client_cpus, "num_gpus": client_gpus}, "init_args": init}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app(fit_args, watch, done),
            client_app(fit_args, dp_norms),
            num_supernodes=cfg.data.num_clients,
            backend_name="ray",
            backend_config=backend,
        )
    if not (run_dir / "results.json").exists():
        raise FedmoapError(f"the Flower simulation ended without results in {run_dir} (see its log above)")
    return run_dir
