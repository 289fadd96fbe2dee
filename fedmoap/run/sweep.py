"""``fedmoap sweep``: run a study in this process, or write runs as ``fedmoap fit`` argument lines
for a SLURM array (a study's cells, or a grid of overrides x seeds).

``--study FILE`` (:mod:`fedmoap.run.study`): ``--run`` runs every cell in order, one backbone per model
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
import json
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


# ----- studies (fedmoap/run/study.py): run in this process, or write a SLURM array ----------------
def check_extra(extra: dict) -> dict:
    """Overrides given beside a study (``--set``) may only change how runs are computed, not their
    numbers (the neutral keys: ``fabric.*``, ``data.feature_cache``, ...), so that the study's
    run directories keep holding the study's runs."""
    from fedmoap.config.sections import neutral_keys

    # rounds and evaluation rounds are neutral (a run may be extended) but move the table
    neutral = {f"{s}.{k}" for s, k in neutral_keys()} - {"fed.rounds", "fed.eval_every"}
    for key in extra:
        if key not in neutral:
            raise FedmoapError(
                f"--set {key}: only settings that do not change results may be set beside "
                f"a study ({', '.join(sorted(neutral))}); write another study for the rest"
            )
    return extra


def cells_of(study, out: Path, only: list[str] | None, extra: dict | None, check_splits: bool = True) -> list:
    """The study's cells under ``out`` (:meth:`fedmoap.run.study.Study.cells`) with the ``--set``
    overrides ``extra``, of the variants in ``only``."""
    return select(study, study.cells(out, check_extra(extra or {})), only, check_splits)


def select(study, cells: list, only: list[str] | None, check_splits: bool = True) -> list:
    """The cells of the variants named in ``only`` (labels or keys; all if None). With
    ``check_splits``, a cell that reads its split from a variant left out is refused unless that
    split exists already."""
    if not only:
        return cells
    keys = {study.variant(name).key for name in only}
    chosen = [c for c in cells if c.variant.key in keys]
    for c in cells if check_splits else []:
        if (
            c.writes_split
            and c.variant.key not in keys
            and not (c.run_dir / "split.json").is_file()
            and any(o.split == c.split and o.seed == c.seed for o in chosen)
        ):
            raise FedmoapError(
                f"--only: {c.split}/seed{c.seed}'s split is made by variant {c.variant.key!r}, "
                "which has not run yet; add it to --only"
            )
    return chosen


def run_study(
    study, out: str | Path | None = None, only: list[str] | None = None, extra: dict | None = None, echo=print
) -> str:
    """Run (or resume) every cell of ``study`` in order in this process, one backbone per model
    built once and shared by all fits; finished cells are skipped. ``echo`` gets one line per
    cell. Returns the study's table (:func:`study_report`, which also writes it)."""
    import time

    import torch

    from fedmoap.backbones import build_backbone
    from fedmoap.run import runs
    from fedmoap.run.fit import fit
    from fedmoap.run.study_table import report_files

    out = Path(out) if out is not None else study.default_out()
    for file in (out / "seconds.json", *report_files(study, out)):  # written after hours of runs
        check_output_file(file, "--out")
    cells = cells_of(study, out, only, extra)
    book = out / "seconds.json"
    seconds = json.loads(book.read_text()) if book.is_file() else {}
    built: dict = {}
    for c in cells:
        rel = str(c.run_dir.relative_to(out))
        if runs.rounds_done(c.run_dir) >= c.rounds:
            m = runs.read_run(c.run_dir).metrics()
            echo(f"{c.name}: finished earlier: final {100 * m['final']:.2f} last5 {100 * m['last5']:.2f}")
            continue
        m = c.cfg.model  # random-weight towers are drawn from the run's seed; pretrained ones are not
        key = (repr(m), None if m.pretrained or m.arch.startswith("packaged") else c.seed)
        if key not in built:
            if c.cfg.fabric.threads:  # as fit() does: the build's arithmetic depends on the threads
                torch.set_num_threads(c.cfg.fabric.threads)
            built[key] = build_backbone(m, c.seed)
        t = time.perf_counter()
        fit(c.cfg, c.run_dir, progress=False, backbone=built[key])
        seconds[rel] = time.perf_counter() - t
        atomic_write_text(book, json.dumps(seconds, indent=1))
        m = runs.read_run(c.run_dir).metrics()
        echo(f"{c.name}: final {100 * m['final']:.2f} last5 {100 * m['last5']:.2f} ({seconds[rel]:.0f} s)")
    from fedmoap.run.study_table import study_report

    return study_report(study, out)


def cell_line(cell) -> str:
    """A cell as one line of ``fedmoap fit`` arguments naming its run directory."""
    return shlex.join([*cell.args, "--run_dir", str(cell.run_dir)])


def write_study_array(
    study, out: str | Path | None = None, only: list[str] | None = None, extra: dict | None = None
) -> tuple[Path, int, int]:
    """Write ``OUT/<name>.sweep.txt`` for ``slurm/array.sbatch``: one line per cell, the cells
    that write a split first. Returns (file, number of lines, number of split-writing lines):
    lines from the latter on read a split.json that an earlier line writes, so they are submitted
    as a second array that waits for the first."""
    out = Path(out) if out is not None else study.default_out()
    path = out / f"{study.name}.sweep.txt"
    check_output_file(path, "--out")
    cells = cells_of(study, out, only, extra)
    first = [c for c in cells if c.writes_split]
    lines = [cell_line(c) for c in first + [c for c in cells if not c.writes_split]]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path, len(lines), len(first)


def list_cells(
    study, out: str | Path | None = None, only: list[str] | None = None, extra: dict | None = None
) -> list[str]:
    """One line per cell: its run directory, state (new, round r of n, finished, or holding
    another config), config digest and ``fedmoap fit`` arguments. Writes nothing."""
    from fedmoap.config import yamlfile
    from fedmoap.config.digest import config_digest
    from fedmoap.run import runs

    out = Path(out) if out is not None else study.default_out()
    lines = []
    for c in cells_of(study, out, only, extra, check_splits=False):
        done = runs.rounds_done(c.run_dir)
        state = "finished" if done >= c.rounds else f"round {done} of {c.rounds}" if done else "new"
        stored = c.run_dir / "config.yaml"
        if stored.is_file() and config_digest(yamlfile.load(stored.read_text())) != c.digest:
            state = "holds another config"
        lines.append(f"{c.run_dir}  [{state}]  digest {c.digest}  fedmoap fit {cell_line(c)}")
    return lines


def study_command(
    path: str,
    run: bool,
    slurm: bool,
    listing: bool,
    out: str | None,
    only: list[str] | None,
    sets: list[str],
    echo=lambda line: print(line, flush=True),
) -> None:
    """``fedmoap sweep --study FILE --run | --slurm | --list [--out DIR] [--only V ...] [--set K=V ...]``."""
    from fedmoap.run.study import load_study

    if [run, slurm, listing].count(True) != 1:
        raise FedmoapError("sweep --study: give one of --run, --slurm, --list")
    extra = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise FedmoapError(f"--set {item!r} is not KEY=VALUE")
        extra[key] = value
    study = load_study(path)
    if listing:
        echo("\n".join(list_cells(study, out, only, extra)))
    elif slurm:
        file, n, k = write_study_array(study, out, only, extra)
        array = f"slurm/array.sbatch {file}"
        if 0 < k < n:  # the later lines read the split.json that the first k lines write
            echo(
                f"{n} runs -> {file}; submit (lines {k}+ wait for the {k} that write the splits):\n"
                f"  J=$(sbatch --parsable --array=0-{k - 1} {array})\n"
                f"  sbatch --dependency=afterok:${{J%%;*}} --array={k}-{n - 1} {array}"
            )
        else:
            echo(f"{n} runs -> {file}; submit: sbatch --array=0-{n - 1} {array}")
    else:
        echo(run_study(study, out, only, extra, echo))
