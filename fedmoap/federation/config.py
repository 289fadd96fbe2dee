"""The whole run's configuration: :class:`RunConfig`, the method and the seed with the sections of
:mod:`fedmoap.config.sections`, and :func:`config_dict`, the config as plain data.

The CLI (``fedmoap fit``) is generated from :class:`RunConfig` by jsonargparse, so ``fedmoap fit
--help`` prints every field's docstring. The method is one field whose value is a
:class:`~fedmoap.methods.base.Method` subclass with its own documented knobs (``--method pfedmoap
--method.lam 0.3``; ``--method.help pfedmoap`` lists them); the default is pFedMoAP. It lives here,
above the configuration package, because it needs the method class; the digest of a config's plain
data is :mod:`fedmoap.config.digest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from fedmoap.config.sections import DataArgs, DPArgs, EvalArgs, FabricArgs, FedArgs, ModelArgs, TrainArgs
from fedmoap.methods import Method
from fedmoap.methods.pfedmoap import PFedMoAP

__all__ = ["RunConfig", "config_dict"]


@dataclass
class RunConfig:
    """Everything that determines a run's results (``run_dir`` and display options excluded)."""

    method: Method = field(default_factory=PFedMoAP)
    """The federated method and its knobs: a short name (``pfedmoap``, ``promptfl``, ...; see
    README) or a class path (``mypkg.MyMethod``); ``--method.help NAME`` lists its knobs."""
    seed: int = 0
    """Run seed, 0 <= seed < 2**63: every random draw derives from (seed, purpose, round, client)."""
    model: ModelArgs = field(default_factory=ModelArgs)
    """The frozen backbone."""
    data: DataArgs = field(default_factory=DataArgs)
    """Dataset and client split."""
    train: TrainArgs = field(default_factory=TrainArgs)
    """Local training."""
    fed: FedArgs = field(default_factory=FedArgs)
    """Federation."""
    fabric: FabricArgs = field(default_factory=FabricArgs)
    """Processes, devices and precision."""
    eval: EvalArgs = field(default_factory=EvalArgs)
    """Evaluation modes (local, global, neighbor, base2novel, unseen_clients)."""
    dp: DPArgs = field(default_factory=DPArgs)
    """Differential privacy (off by default)."""


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain data (what ``config.yaml`` holds and ``--config`` reads back): the
    method as ``{class_path, init_args}``, each section as a dict."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, Method):
            out[f.name] = value.spec()
        elif is_dataclass(value):
            out[f.name] = {g.name: getattr(value, g.name) for g in fields(value)}
        else:
            out[f.name] = value
    return out
