"""Which features a method combines with: refusals derived from what the method declares
(:mod:`fedmoap.methods.declarations`) and from what its client implements, never from a list of
method names. The validator (:func:`problems`) and ``fedmoap methods`` (:func:`matrix`) both read
:func:`refusals`, so the matrix a user reads is the rule a run obeys.

A cell of the matrix is a method with a DP mode, an evaluation mode, a learning-rate schedule and
an engine (``fedmoap fit`` or Flower). Each refusal is one line naming both sides and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, get_args

from fedmoap.config.sections import EvalMode
from fedmoap.methods.base import ClientModule, Method
from fedmoap.methods.declarations import OWN_RECORD

if TYPE_CHECKING:
    from fedmoap.federation.config import RunConfig


__all__ = [
    "DP_MODES",
    "EVAL_MODES",
    "SCHEDULES",
    "ENGINES",
    "PUBLIC",
    "Cell",
    "name_of",
    "implements",
    "refusals",
    "setting_problems",
    "cell_of",
    "problems",
    "cells",
    "matrix",
]

DP_MODES = ("off", "client_upload", "record_sgd")
EVAL_MODES: tuple[str, ...] = get_args(EvalMode)
SCHEDULES = ("local", "rounds")
ENGINES = ("fit", "flower")
PUBLIC = (
    "each client's training-set size (the server's FedAvg weights; DP-SGD's expected batch q·n)",
    "who takes part in each round",
    "the round number",
    "each client's evaluation counts (correct, total): the simulation's measurement, not training",
)
"""What reaches the server outside every DP mechanism, under both ``dp.mode``s: its accountant
treats these as public."""


@dataclass(frozen=True)
class Cell:
    """What a run combines with its method, as far as refusals go."""

    dp: str = "off"
    modes: tuple[str, ...] = ("local",)
    """Evaluation modes (``local`` is always evaluated)."""
    schedule: str = "local"
    engine: str = "fit"
    adapts: bool = True
    """Whether held-out clients adapt (``eval.adaptation_epochs`` > 0 or null)."""
    own_label_space: bool = False
    """``eval.local_label_space: own``."""
    rounds: int = 2
    """``fed.rounds`` (for methods whose statistics depend on the round)."""


def name_of(method: Method) -> str:
    return method.name or type(method).__name__


def implements(method: Method, hook: str) -> bool:
    """Whether the method's client overrides :class:`ClientModule`'s ``hook``."""
    return getattr(method.client_class, hook) is not getattr(ClientModule, hook)


def refusals(method: Method, cell: Cell) -> list[str]:
    """Why ``method`` cannot run in ``cell`` (empty: it can), one line each."""
    d, name, out = method.declared(), name_of(method), []
    modes = set(cell.modes)
    if cell.dp != "off":
        if method.shares_statistics and any(method.collects_statistics(t) for t in range(cell.rounds + 1)):
            out.append(
                f"dp.mode {cell.dp}: method {name} sends client statistics (e.g. per-class feature sums and "
                "counts) that no DP mechanism covers; run it with dp.mode off"
            )
        if "unseen_clients" in modes and cell.adapts and method.trains and d.newcomer_uploads:
            out.append(
                f"dp.mode {cell.dp} with eval.modes unseen_clients: method {name}'s never-trained client sends "
                "what it adapted to the server outside the DP mechanism; set eval.adaptation_epochs 0"
            )
    if cell.dp == "client_upload" and d.reveals is not None:
        out.append(
            f"dp.mode client_upload: method {name}'s upload shows the server {d.reveals}, which the "
            "mechanism does not noise; use dp.mode record_sgd"
        )
    if cell.dp == "record_sgd":
        if d.record_loss != OWN_RECORD:
            out.append(
                f"dp.mode record_sgd: method {name}'s per-record loss reads {d.record_loss}, so clipping one "
                "record's gradient does not bound its influence; use dp.mode client_upload"
            )
        if d.keeps_records is not None:
            out.append(
                f"dp.mode record_sgd: method {name} keeps {d.keeps_records}, outside DP-SGD; use dp.mode client_upload"
            )
        if method.trains and implements(method, "eval_adaptation_epochs"):
            out.append(
                f"dp.mode record_sgd: method {name} trains on its records at evaluation time, outside "
                "DP-SGD and its accountant; use dp.mode client_upload"
            )
        if "unseen_clients" in modes and cell.adapts and method.trains:
            out.append(
                "dp.mode record_sgd with eval.modes unseen_clients: a held-out client's few-shot adaptation "
                "trains on its records outside DP-SGD and its accountant; set eval.adaptation_epochs 0"
            )
    renames = implements(method, "set_classnames")
    for mode in ("base2novel", "xdataset"):
        if mode in modes and not renames:
            out.append(
                f"eval.modes {mode}: method {name} cannot evaluate on class names it did not train on "
                "(its client does not implement set_classnames)"
            )
    if cell.own_label_space and not renames:
        out.append(
            f"eval.local_label_space own: method {name} cannot change its label space (its client does "
            "not implement set_classnames)"
        )
    if cell.engine == "flower":
        extra = [m for m in cell.modes if m != "local"]
        if extra:
            out.append(
                f"eval.modes {','.join(extra)}: these evaluations need every client's state in one "
                "process; on Flower use eval.modes [local]"
            )
    return out


def setting_problems(method: Method, rounds: int, num_clients: int) -> list[str]:
    """The method's declared round- and client-indexed knobs against the run's rounds and clients."""
    d, out = method.declared(), []
    for knob in d.round_knobs:
        value = getattr(method, knob)
        if value is not None and not 1 <= value <= rounds:
            out.append(
                f"method.{knob} {value:g} is not a round of this run (1..fed.rounds = {rounds}); "
                "null places it relative to fed.rounds"
            )
    for knob in d.client_knobs:
        stray = sorted(c for c in (getattr(method, knob) or {}) if not 0 <= c < num_clients)
        if stray:
            last = num_clients - 1
            out.append(f"method.{knob}: clients {stray} are not in this run (0..data.num_clients - 1 = {last})")
    return out


def cell_of(cfg: RunConfig, engine: str = "fit") -> Cell:
    """The cell a run config sits in."""
    e = cfg.eval
    return Cell(
        dp=cfg.dp.mode,
        modes=tuple(e.modes),
        schedule=cfg.train.lr_schedule,
        engine=engine,
        adapts=e.adaptation_epochs != 0,
        own_label_space=e.local_label_space == "own",
        rounds=cfg.fed.rounds,
    )


def problems(cfg: RunConfig, engine: str = "fit") -> list[str]:
    """Everything the run's method cannot combine with in ``cfg`` on ``engine``."""
    return refusals(cfg.method, cell_of(cfg, engine)) + setting_problems(
        cfg.method, cfg.fed.rounds, cfg.data.num_clients
    )


def cells() -> Iterator[Cell]:
    """Every cell of the matrix: one evaluation mode besides ``local`` at a time."""
    for dp in DP_MODES:
        for mode in EVAL_MODES:
            for schedule in SCHEDULES:
                for engine in ENGINES:
                    yield Cell(dp, ("local",) if mode == "local" else ("local", mode), schedule, engine)


def matrix(methods: dict[str, type[Method]]) -> list[tuple[str, Cell, list[str]]]:
    """(method name, cell, refusals) for every method (at its defaults) and cell."""
    return [(name, cell, refusals(cls(), cell)) for name, cls in methods.items() for cell in cells()]
