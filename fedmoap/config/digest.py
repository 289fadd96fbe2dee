"""The config digest, and what a stored config that predates a setting means by its absence.

Both work on a config as plain data (what ``config.yaml`` holds, ``{section: {key: value}}`` with
the method as ``{class_path, init_args}``). The digest covers the settings that determine a run's
results: neutral keys are left out, and so is a section, key or method knob added later
(:data:`~fedmoap.config.flags.ADDED`) while it holds its default, so runs made before it existed
keep their digest and still resume and extend.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import fields, is_dataclass
from typing import Any

from fedmoap.config.sections import SECTIONS, DPArgs, EvalArgs, neutral_keys

__all__ = [
    "ADDED_SECTIONS",
    "added_section_defaults",
    "added_keys",
    "added_knobs",
    "with_added_defaults",
    "config_digest",
]

ADDED_SECTIONS = {"eval": EvalArgs, "dp": DPArgs}
"""Config sections added after runs were made without them: a stored config.yaml that lacks one
means its defaults, and a section at its defaults is left out of the config digest, so such runs
still resume and extend."""


def added_section_defaults() -> dict[str, dict[str, Any]]:
    """Section name -> its default values as plain data, for every :data:`ADDED_SECTIONS` entry."""
    return {name: {f.name: getattr(cls(), f.name) for f in fields(cls)} for name, cls in ADDED_SECTIONS.items()}


def added_keys() -> dict[tuple[str, str], Any]:
    """(section, key) -> default of every section field added later (:data:`~fedmoap.config.flags.ADDED`)."""
    out: dict[tuple[str, str], Any] = {}
    for name, cls in SECTIONS.items():
        defaults = cls()
        out.update({(name, f.name): getattr(defaults, f.name) for f in fields(cls) if f.metadata.get("added")})
    return out


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
