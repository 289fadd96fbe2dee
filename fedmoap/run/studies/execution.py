"""Running a study (a study file, or a grid: :mod:`fedmoap.run.studies.grid`): every cell in order
in this process (``fedmoap sweep --study FILE --run``, ``fedmoap sweep --config C --grid ... --run``),
as a SLURM array of ``fedmoap fit`` argument lines (``--slurm``), or listed with each cell's state
(``--list``)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_write_text, check_output_file

if TYPE_CHECKING:
    from fedmoap.run.studies.format import Study


__all__ = [
    "check_extra",
    "cells_of",
    "select",
    "run_study",
    "cell_line",
    "write_study_array",
    "list_cells",
    "study_command",
]


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
    """The study's cells under ``out`` (:meth:`fedmoap.run.studies.format.Study.cells`) with the ``--set``
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
    from fedmoap.federation.results import rounds_done
    from fedmoap.run import runs
    from fedmoap.run.fit import fit
    from fedmoap.run.studies.table import report_files

    out = Path(out) if out is not None else study.default_out()
    for file in (out / "seconds.json", *report_files(study, out)):  # written after hours of runs
        check_output_file(file, "--out")
    cells = cells_of(study, out, only, extra)
    book = out / "seconds.json"
    seconds = json.loads(book.read_text()) if book.is_file() else {}
    built: dict = {}
    for c in cells:
        rel = str(c.run_dir.relative_to(out))
        if rounds_done(c.run_dir) >= c.rounds:
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
    from fedmoap.run.studies.table import study_report

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
    """What each row holds that the others do not (:func:`~fedmoap.run.studies.settings.settings_lines`),
    then one line per cell: its run directory, state (new, round r of n, finished, or holding
    another config), config digest and ``fedmoap fit`` arguments. Writes nothing."""
    from fedmoap.config import yamlfile
    from fedmoap.config.digest import config_digest
    from fedmoap.federation.results import rounds_done

    out = Path(out) if out is not None else study.default_out()
    from fedmoap.run.studies.settings import settings_lines, settings_of

    chosen = cells_of(study, out, only, extra, check_splits=False)
    lines = [*settings_lines(settings_of(study, chosen)), ""]
    for c in chosen:
        done = rounds_done(c.run_dir)
        state = "finished" if done >= c.rounds else f"round {done} of {c.rounds}" if done else "new"
        stored = c.run_dir / "config.yaml"
        if stored.is_file() and config_digest(yamlfile.load(stored.read_text())) != c.digest:
            state = "holds another config"
        lines.append(f"{c.run_dir}  [{state}]  digest {c.digest}  fedmoap fit {cell_line(c)}")
    return lines


def study_command(
    make_study: Callable[[], Study],
    run: bool,
    slurm: bool,
    listing: bool,
    out: str | None,
    only: list[str] | None,
    sets: list[str],
    echo=lambda line: print(line, flush=True),
) -> None:
    """``fedmoap sweep (--study FILE | --config C --grid ...) --run | --slurm | --list [--out DIR]
    [--only V ...] [--set K=V ...]``: ``make_study`` reads the study file or builds the grid's
    study (:func:`fedmoap.run.studies.grid.grid_study`) once the arguments are known to be whole."""
    if [run, slurm, listing].count(True) != 1:
        raise FedmoapError("sweep: give one of --run, --slurm, --list")
    extra = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise FedmoapError(f"--set {item!r} is not KEY=VALUE")
        extra[key] = value
    study = make_study()
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
