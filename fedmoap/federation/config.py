"""Typed run configuration: one dataclass per section, each field documented where it is declared.

The CLI (``fedmoap fit``) is generated from these dataclasses by jsonargparse, so a YAML key or a
``--section.key`` override that is not declared here is rejected with its name, and
``fedmoap fit --help`` prints every field's docstring. The method is one field whose value is a
:class:`~fedmoap.methods.base.Method` subclass with its own documented knobs (``--method pfedmoap
--method.lam 0.3``; ``--method.help pfedmoap`` lists them).

The defaults are the offline default run: packaged towers, Fashion-MNIST, 5 clients with
Dirichlet(0.1) label skew, 8 shots per class, pFedMoAP, 10 rounds of 5 local epochs; where they
differ from the paper's recipe (number of clients, learning rate) the field says so, and the
paper configs in ``configs/paper/`` set the paper's values.

Fields marked ``neutral`` (``field(metadata=NEUTRAL)``) do not change a run's numbers: a run may
be resumed or extended with other values, and they are left out of the config digest.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from fedmoap.args import (  # noqa: F401  (re-exported: the sections' public path is fedmoap.federation.config)
    DataArgs,
    DPArgs,
    EvalArgs,
    EvalMode,
    FabricArgs,
    FedArgs,
    ModelArgs,
    TrainArgs,
    neutral_keys,
)
from fedmoap.field_flags import ADDED, NEUTRAL  # noqa: F401  (re-exported)
from fedmoap.methods import Method
from fedmoap.methods.pfedmoap import PFedMoAP


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


ADDED_SECTIONS = {"eval": EvalArgs, "dp": DPArgs}
"""Config sections added after runs were made without them: a stored config.yaml that lacks one
means its defaults, and a section at its defaults is left out of the config digest, so such runs
still resume and extend."""


def added_section_defaults() -> dict[str, dict[str, Any]]:
    """Section name -> its default values as plain data, for every :data:`ADDED_SECTIONS` entry."""
    return {name: {f.name: getattr(cls(), f.name) for f in fields(cls)} for name, cls in ADDED_SECTIONS.items()}


def added_keys() -> dict[tuple[str, str], Any]:
    """(section, key) -> default of every field added later (:data:`ADDED`)."""
    cfg = RunConfig()
    return {
        (f.name, g.name): getattr(section, g.name)
        for f in fields(cfg)
        if is_dataclass(section := getattr(cfg, f.name)) and not isinstance(section, Method)
        for g in fields(section)
        if g.metadata.get("added")
    }


def added_knobs(spec: Any) -> dict[str, Any]:
    """knob -> default of the method knobs added later (``field(metadata=ADDED)``) of the method a
    stored ``{class_path, init_args}`` names; empty if the class cannot be imported."""
    path = spec.get("class_path") if isinstance(spec, dict) else None
    module, _, name = (path or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return {}
    return {f.name: f.default for f in fields(cls) if f.metadata.get("added")} if is_dataclass(cls) else {}


def with_added_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """A stored config with every section, key and method knob added since it was written at its
    default."""
    out = {**added_section_defaults(), **cfg}
    for (s, k), default in added_keys().items():
        if isinstance(out.get(s), dict) and k not in out[s]:
            out[s] = {**out[s], k: default}
    knobs = added_knobs(out.get("method"))
    if knobs and isinstance(out["method"].get("init_args") or {}, dict):
        out["method"] = {**out["method"], "init_args": {**knobs, **(out["method"].get("init_args") or {})}}
    return out


def config_digest(cfg: dict[str, Any]) -> str:
    """Digest of the settings that determine results (the neutral keys left out)."""
    neutral, later = neutral_keys(), added_keys()
    added = added_section_defaults()  # a section added later, at its defaults: as if absent
    cfg = with_added_defaults(cfg)
    knobs = added_knobs(cfg.get("method"))
    if knobs:  # a method knob added later, at its default: as if absent
        args = {k: v for k, v in (cfg["method"].get("init_args") or {}).items() if not (k in knobs and v == knobs[k])}
        cfg = {**cfg, "method": {**cfg["method"], "init_args": args}}
    kept = {
        s: (
            {k: v for k, v in sec.items() if (s, k) not in neutral and not ((s, k) in later and v == later[s, k])}
            if isinstance(sec, dict) and s != "method"
            else sec
        )
        for s, sec in cfg.items()
        if not (s in added and sec == added[s])
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
