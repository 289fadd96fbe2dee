"""What a run on Flower accepts: ``fedmoap fit``'s config, less what needs every client's state
in one process. Each refusal is one line naming the key or the method."""

from __future__ import annotations

from pathlib import Path

from fedmoap.config.sections import FabricArgs
from fedmoap.errors import FedmoapError
from fedmoap.federation.config import RunConfig

__all__ = ["flower_problems", "checked_config"]


def flower_problems(f: FabricArgs) -> list[str]:
    """Why the ``fabric`` section cannot run on Flower (empty: it can); what the method and the
    evaluation modes cannot do on Flower is :mod:`fedmoap.federation.combinations`'."""
    out = []
    if str(f.devices) != "1" or f.num_nodes != 1:
        out.append(
            f"fabric.devices {f.devices} / fabric.num_nodes {f.num_nodes}: on Flower each SuperNode "
            "is one process (set both to 1; give the simulation's clients GPUs instead)"
        )
    return out


def checked_config(args: list[str], fresh: bool = True) -> tuple[RunConfig, Path]:
    """``fedmoap fit`` arguments -> (config, run directory), validated as ``fit`` does and refused
    where Flower cannot run them; ``fresh``: the run directory must not hold a run already (a
    Flower run does not resume: its clients' state lives on the nodes)."""
    from fedmoap.federation.config import config_dict
    from fedmoap.run.parse import parse_fit
    from fedmoap.run.rundir import check_run_dir
    from fedmoap.run.validate import validate

    cfg, run_dir, _ = parse_fit(["fit", *args])
    if run_dir is None:
        raise FedmoapError("--run_dir is required for a Flower run")
    validate(cfg, engine="flower")
    problems = flower_problems(cfg.fabric)
    if problems:
        raise FedmoapError("; ".join(problems))
    if fresh and check_run_dir(Path(run_dir), config_dict(cfg)):
        raise FedmoapError(
            f"run_dir {run_dir} holds a run already: a Flower run does not resume (its "
            "clients' state lives on the nodes); use a new --run_dir"
        )
    return cfg, Path(run_dir)
