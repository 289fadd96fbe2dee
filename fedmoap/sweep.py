"""``fedmoap sweep``: a grid of overrides x seeds, one ``fedmoap fit`` argument line per run.

The file is read by ``slurm/array.sbatch`` (line k for array task k); each line names its own run
directory, so a requeued or re-submitted element resumes its own run.
"""
from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_write_text


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``["pfedmoap.lam=0,0.5", "method=promptfl,pfedmoap"]`` -> [(key, values), ...]."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise FedmoapError(f"sweep: grid entry {spec!r} is not KEY=V1,V2,...")
        grid.append((key, values.split(",")))
    return grid


def sweep_lines(config: str | None, grid: list[tuple[str, list[str]]], seeds: list[int],
                runs_root: str) -> list[str]:
    """One argument line per point of the grid and seed, each with a distinct ``--run_dir``."""
    lines = []
    keys = [k for k, _ in grid]
    for values in itertools.product(*[v for _, v in grid]):
        for seed in seeds:
            name = "-".join(f"{k.split('.')[-1]}{v}" for k, v in zip(keys, values))
            name = re.sub(r"[^\w.=-]+", "_", f"{name}-seed{seed}" if name else f"seed{seed}")
            args = ([f"--config {shlex.quote(config)}"] if config else [])
            args += [f"--{k} {shlex.quote(v)}" for k, v in zip(keys, values)]
            args += [f"--seed {seed}", f"--run_dir {shlex.quote(str(Path(runs_root) / name))}"]
            lines.append(" ".join(args))
    return lines


def write_sweep(out: str, config: str | None, grid: list[str], seeds: list[int], runs_root: str) -> int:
    """Write the sweep file; returns its number of lines (the array is ``0-(n-1)``)."""
    if config and not Path(config).exists():
        raise FedmoapError(f"sweep: config {config} does not exist")
    lines = sweep_lines(config, parse_grid(grid), seeds, runs_root)
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return len(lines)
