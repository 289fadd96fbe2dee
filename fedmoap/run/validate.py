"""Checks of a run config beyond its types, before anything is built: each section's own ranges
(its ``problems()``, :mod:`fedmoap.config.sections`), the checks that span sections, the method's
knobs, the evaluation modes, differential privacy and what the method cannot combine with, each
message naming its key."""

from __future__ import annotations

from fedmoap.config.typecheck import type_problems
from fedmoap.errors import FedmoapError
from fedmoap.federation import combinations, evaluation
from fedmoap.federation.config import RunConfig
from fedmoap.federation.dp_budget import problems as privacy_problems
from fedmoap.methods.base import INPUTS

__all__ = ["validate"]


def validate(cfg: RunConfig, engine: str = "fit") -> None:
    """Checks beyond types, all of them, before anything is built: each section's own ranges, the
    checks that span sections, and what the method cannot combine with on ``engine`` (fit or
    flower), each message naming its key; raises one :class:`FedmoapError` listing every problem."""
    problems = type_problems(cfg)
    if problems:  # the range checks below assume the declared types
        raise FedmoapError("; ".join(problems))
    d, f = cfg.data, cfg.fed
    problems = [] if 0 <= cfg.seed < 2**63 else [f"seed must be in [0, 2**63), got {cfg.seed}"]
    problems += f.problems()
    if f.participants is not None and not 1 <= f.participants <= d.num_clients:
        problems.append(f"fed.participants must be in [1, data.num_clients = {d.num_clients}] or null")
    problems += d.problems() + cfg.train.problems() + cfg.model.problems() + cfg.fabric.problems()
    method = cfg.method
    if not method.required_inputs() <= INPUTS:
        problems.append(f"method: {type(method).__name__}'s inputs must be a subset of {sorted(INPUTS)}")
    problems += method.problems()
    problems += evaluation.problems(cfg.eval, cfg.data)
    problems += privacy_problems(cfg.dp, cfg.fabric)
    problems += combinations.problems(cfg, engine)
    if problems:
        raise FedmoapError("; ".join(problems))
