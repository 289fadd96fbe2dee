"""``fedmoap sweep``: run a study in this process, or write runs as ``fedmoap fit`` argument lines
for a SLURM array (a study's cells, or a grid of overrides x seeds).

``--study FILE`` (:mod:`fedmoap.run.studies`): ``--run`` runs every cell in order, one backbone per model
shared by all fits, skipping finished cells; ``--slurm`` writes ``OUT/<name>.sweep.txt``; ``--list``
prints the cells. ``--config/--grid``: a grid, one line per run, described below.

The file is read by ``slurm/array.sbatch`` (line k for array task k); each line names its own run
directory, so a requeued or re-submitted element resumes its own run.

Grid keys are config keys (``fed.rounds``, ``train.lr``), ``method`` (short names or class
paths), ``method.KNOB`` (applied to the methods that have that knob) or ``NAME.KNOB`` (applied
to method NAME only, e.g. ``pfedmoap.lam``). A knob that does not apply to a point's method is
left out of that point, so ``method=promptfl,pfedmoap pfedmoap.lam=0,0.5`` gives three runs per
seed, not four. Every line is parsed like ``fedmoap fit`` would before the file is written.
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
from fedmoap.io import atomic_write_text, check_output_file


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``["pfedmoap.lam=0,0.5", "method=promptfl,pfedmoap"]`` -> [(key, values), ...]."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise FedmoapError(f"sweep: grid entry {spec!r} is not KEY=V1,V2,...")
        grid.append((key, values.split(",")))
    return grid


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


def sweep_lines(config: str | None, grid: list[tuple[str, list[str]]], seeds: list[int], runs_root: str) -> list[str]:
    """One argument line per distinct point of the grid and seed, each with its own ``--run_dir``."""
    from fedmoap.methods import registry

    names = registry()
    base_method = None
    lines: list[str] = []
    dirs: dict[str, str] = {}
    for values in itertools.product(*[v for _, v in grid]):
        point = dict(zip([k for k, _ in grid], values))
        method = point.get("method") or (base_method := base_method or _base_method(config))
        knobs = {f.name for f in dataclasses.fields(_method_class(method))}
        args: list[tuple[str, str]] = []
        for key, value in point.items():
            head, _, knob = key.partition(".")
            if head in names and head != "method":
                if names[head] is not _method_class(method) or knob not in knobs:
                    continue  # another method's knob
                key = f"method.{knob}"
            elif head == "method" and knob and knob not in knobs:
                continue
            args.append((key, value))
        for seed in seeds:
            name = "-".join(f"{k.split('.')[-1]}{v.split('.')[-1]}" for k, v in args)
            name = re.sub(r"[^\w.=-]+", "_", f"{name}-seed{seed}" if name else f"seed{seed}")
            body = [f"--config {shlex.quote(config)}"] if config else []
            body += [f"--{k} {shlex.quote(v)}" for k, v in args] + [f"--seed {seed}"]
            line = " ".join(body)
            if line in dirs:
                continue
            if name in dirs.values():  # two points would share a directory: tell them apart
                name += "-" + hashlib.sha256(line.encode()).hexdigest()[:6]
            dirs[line] = name
            lines.append(f"{line} --run_dir {shlex.quote(str(Path(runs_root) / name))}")
    return lines


def check_lines(lines: list[str]) -> None:
    """Parse every line as ``fedmoap fit`` would; the first bad one is reported with its number."""
    from fedmoap.run.fit import validate
    from fedmoap.run.parse import parse_fit

    for i, line in enumerate(lines):
        try:
            cfg, _, _ = parse_fit(["fit", *shlex.split(line)])
            validate(cfg)
        except FedmoapError as exc:
            raise FedmoapError(f"sweep: line {i} ({line}): {exc}") from None


def write_sweep(out: str, config: str | None, grid: list[str], seeds: list[int], runs_root: str) -> int:
    """Write the sweep file; returns its number of lines (the array is ``0-(n-1)``)."""
    check_output_file(Path(out), "--out")
    if config and not Path(config).exists():
        raise FedmoapError(f"sweep: config {config} does not exist")
    lines = sweep_lines(config, parse_grid(grid), seeds, runs_root)
    check_lines(lines)
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return len(lines)
