"""A grid of overrides as a study: ``fedmoap sweep --config C --grid KEY=V1,V2 ... --seeds S ...``
builds a :class:`~fedmoap.run.studies.format.Study` in memory (:func:`grid_study`) and runs,
lists or writes it as a SLURM array exactly as a study file is (``--run | --slurm | --list``).

Grid keys are config keys (``fed.rounds``, ``train.lr``), ``method`` (short names or class
paths), ``method.KNOB`` (applied to the methods that have that knob) or ``NAME.KNOB`` (applied
to method NAME only, e.g. ``pfedmoap.lam``). A knob that does not apply to a point's method is
left out of that point, so ``method=promptfl,pfedmoap pfedmoap.lam=0,0.5`` gives three variants,
not four; points that end up equal are one; a knob that applies to no point is refused.

The study (named ``grid``, its cells under ``OUT``, ``runs/sweep`` unless given): ``base`` is
``config: C``; the keys under ``data.`` and ``eval.`` shape the data split (which clients hold
which images and classes, who is held out), so their product is the study's ``splits`` (one split
named ``base`` without them) and the product of the other keys its ``variants``, each run with
every seed. A split's and a variant's name come from its values (``alpha0.1``,
``methodpfedmoap-lam0.5``; ``base`` when it has none; a short hash tells apart two that would
share a name), a variant's label is its overrides (``method=pfedmoap method.lam=0.5``). A run's
directory is ``OUT/<split>/seed<seed>/<variant>``, and the variants of a (split, seed) share its
``split.json`` as in every study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import re
import shlex
from pathlib import Path

from fedmoap.errors import FedmoapError
from fedmoap.run.studies.format import KEY, SET_BY_STUDY, Study, Variant

__all__ = ["SPLIT_SECTIONS", "DEFAULT_OUT", "NONE", "parse_grid", "grid_study"]

SPLIT_SECTIONS = ("data.", "eval.")
"""Grid keys under these sections make the study's splits; the others its variants."""
DEFAULT_OUT = Path("runs") / "sweep"
NONE = "base"
"""The name of the one split, or of the one variant, that the grid sets nothing of."""


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``["pfedmoap.lam=0,0.5", "method=promptfl,pfedmoap"]`` -> [(key, values), ...]."""
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values or not KEY.fullmatch(key):
            raise FedmoapError(f"sweep: grid entry {spec!r} is not KEY=V1,V2,...")
        if key in SET_BY_STUDY or key == "config":
            raise FedmoapError(f"sweep: grid entry {spec!r}: {key} is set by the sweep (--config, --seeds, --out)")
        if key in (k for k, _ in grid):
            raise FedmoapError(f"sweep: grid entry {spec!r}: {key} is in the grid twice")
        grid.append((key, values.split(",")))
    return grid


def grid_study(config: str | None, specs: list[str], seeds: list[int], out: str | Path | None = None) -> Study:
    """The study of a grid (the module's docstring): ``config`` the base config of every run,
    ``specs`` the ``--grid`` entries, ``seeds`` every variant's seeds, ``out`` its cells' directory
    (default ``runs/sweep``). Refuses, in one line, a bad entry, an unknown method, a config that
    is not a file and a knob that applies to no point; :meth:`Study.cells` parses every run."""
    from fedmoap.methods import registry

    if config and not Path(config).is_file():
        raise FedmoapError(f"sweep: --config {config} is not a file")
    grid = parse_grid(specs)
    if not seeds or len(set(seeds)) < len(seeds) or any(s < 0 for s in seeds):
        raise FedmoapError(f"sweep: --seeds {seeds} is not a list of distinct seeds (integers >= 0)")
    shaping = [(k, v) for k, v in grid if k.startswith(SPLIT_SECTIONS)]
    others = [(k, v) for k, v in grid if not k.startswith(SPLIT_SECTIONS)]
    names = registry()
    base_method: type | None = None
    applied: set[str] = set()
    points: list[tuple[tuple[str, str], ...]] = []
    for values in itertools.product(*[v for _, v in others]):
        point = dict(zip([k for k, _ in others], values))
        if "method" in point:
            method = _method_class(point["method"])
        else:
            method = base_method = base_method or _method_class(_base_method(config))
        knobs = {f.name for f in dataclasses.fields(method)}
        args: list[tuple[str, str]] = []
        for key, value in point.items():
            head, _, knob = key.partition(".")
            if head in names and head != "method":
                if names[head] is not method or knob.split(".")[0] not in knobs:
                    continue  # another method's knob
                applied.add(key)
                key = f"method.{knob}"
            elif head == "method" and knob:
                if knob.split(".")[0] not in knobs:
                    continue
                applied.add(key)
            args.append((key, value))
        if tuple(args) not in points:
            points.append(tuple(args))
    for key, _ in others:
        head, _, knob = key.partition(".")
        if (head == "method" and knob or head in names) and key not in applied:
            which = "no method of the grid" if head == "method" else f"{head} is not among the grid's methods or"
            raise FedmoapError(f"sweep: grid entry {key}: {which} has no knob {knob!r}")
    variants = _named(points)
    split_points = [tuple(zip([k for k, _ in shaping], vs)) for vs in itertools.product(*[v for _, v in shaping])]
    splits = _named(list(dict.fromkeys(split_points)))  # duplicate values collapse
    command = ["fedmoap", "sweep", *(["--config", config] if config else []), "--grid", *specs]
    return Study(
        path=Path("sweep --grid"),
        name="grid",
        description=shlex.join([*command, "--seeds", *map(str, seeds)]),
        base={"config": config} if config else {},
        splits={name: dict(point) for name, _, point in splits},
        seeds=list(seeds),
        variants=[
            Variant(label, name, None, dict(point), list(seeds), [s for s, _, _ in splits])
            for name, label, point in variants
        ],
        metrics=["final", "last5"],
        table_splits=[s for s, _, _ in splits],
        out=Path(out) if out is not None else DEFAULT_OUT,
    )


def _named(points: list[tuple[tuple[str, str], ...]]) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    """(directory name, label, point) of each point: the name from its values, filesystem-safe
    and unique (a short hash of the label where two would share one); the label its overrides."""
    out, taken = [], set()
    for point in points:
        label = " ".join(f"{k}={v}" for k, v in point) or NONE
        name = "-".join(f"{k.split('.')[-1]}{v.split('.')[-1] if k == 'method' else v}" for k, v in point)
        name = re.sub(r"[^\w.-]+", "_", name).lstrip("_.-") or NONE
        if name in taken:
            name += "-" + hashlib.sha256(label.encode()).hexdigest()[:6]
        taken.add(name)
        out.append((name, label, point))
    return out


def _method_class(spec: str) -> type:
    from fedmoap.methods import resolve

    module, _, name = resolve(spec).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise FedmoapError(f"sweep: unknown method {spec!r}") from None


def _base_method(config: str | None) -> str:
    from fedmoap.run.parse import parse_fit

    cfg, _, _ = parse_fit(["fit"] + (["--config", config] if config else []))
    return type(cfg.method).__module__ + "." + type(cfg.method).__qualname__
