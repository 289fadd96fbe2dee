"""A study's table (``fedmoap report --study FILE``, and the end of ``fedmoap sweep --study --run``):
rows = variants, columns = splits x metrics, mean ± sample std over seeds, from the run directories
a study plans, or from an earlier record of the same study where a run directory is gone.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_write_text, check_output_file
from fedmoap.run.report import cell, run_metrics
from fedmoap.run.runs import read_run
from fedmoap.run.studies.code import mixed_code
from fedmoap.run.studies.settings import settings_lines, settings_of

__all__ = ["TITLES", "study_table", "recorded_cells", "report_files", "record_table", "provenance", "study_report"]

TITLES = {
    "final": "final round",
    "last5": "last 5 rounds",
    "worst": "worst client",
    "pooled": "pooled",
    "b2n.local": "local",
    "b2n.base": "base",
    "b2n.novel": "novel",
    "b2n.hm": "HM(base, novel)",
    "b2n.hm3": "HM(local, base, novel)",
    "unseen": "held-out clients",
    "unseen.adapted": "held-out, adapted",
    "mia.mlp": "attack MLP",
    "mia.loss": "loss attack",
    "mia.mlp.auc": "MLP AUC",
    "mia.loss.auc": "loss AUC",
}
"""Short column titles of the study table."""


def study_table(
    planned: dict[str, dict[str, list[tuple[int, Path]]]],
    splits: list[str],
    metrics: list[str],
    seconds: dict[str, float] | None = None,
    recorded: dict[str, dict[str, Any]] | None = None,
    runs: bool = True,
    marks: dict[str, str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The table of a study's runs: ``planned`` is row label -> split -> [(seed, run directory)];
    rows = labels, columns = ``splits`` x ``metrics``, each cell the mean ± sample std over the
    finished runs' values in %, the best mean of a column in bold, ``(n of m seeds)`` where runs
    are missing. Returns the Markdown and a record (per-seed values as fractions, seconds: the
    ``seconds`` given per run directory, else the ``seconds`` a run's results.json holds; code: the
    fedmoap version and commit that made the run; curve: [round, mean accuracy] of every
    evaluated round).
    ``recorded``: run directory -> an earlier record's entry, used where that directory holds no
    results.json; with ``runs`` False no run directory is read (every cell from ``recorded``)."""
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    missing, unfinished = [], []
    for label, cells in planned.items():
        for split in splits:
            for seed, path in cells.get(split, []):
                if not (runs and (Path(path) / "results.json").is_file()):
                    if str(path) in (recorded or {}):
                        rows.setdefault(label, {}).setdefault(split, []).append(recorded[str(path)])
                    else:
                        missing.append(str(path))
                    continue
                run = read_run(Path(path))
                if not run.finished:
                    unfinished.append(str(path))
                    continue
                values = {m: v for m, v in run_metrics(run).items() if m in metrics}
                took = (seconds or {}).get(str(path), run.results.get("seconds"))
                rows.setdefault(label, {}).setdefault(split, []).append(
                    {
                        "seed": seed,
                        **values,
                        "rounds": run.evaluated[-1]["round"] if run.evaluated else 0,
                        "seconds": took,
                        "config_digest": run.results.get("config_digest"),
                        "code": run.results.get("code"),
                        "curve": [[r["round"], r["mean_acc"]] for r in run.evaluated],
                        "run_dir": str(path),
                    }
                )
    stats = {
        label: {
            split: {m: _stats([r.get(m, math.nan) for r in rows.get(label, {}).get(split, [])]) for m in metrics}
            for split in splits
        }
        for label in planned
    }
    best = {
        (s, m): max((stats[label][s][m]["mean"] for label in planned if stats[label][s][m]["n"]), default=math.nan)
        for s in splits
        for m in metrics
        if not m.startswith("mia.")  # an attack's success is no method's merit: nothing in bold
    }
    titles = [TITLES.get(m, m) + " (%)" for m in metrics]
    head = titles if len(splits) == 1 else [f"{s}: {t}" for s in splits for t in titles]
    lines = ["| variant | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for label, cells in planned.items():
        row = []
        for s in splits:
            for m in metrics:
                st, want = stats[label][s][m], len(cells.get(s, []))
                text = cell(st["mean"], st["std"]) if st["n"] else "–"
                text = f"**{text}**" if st["n"] and st["mean"] == best.get((s, m)) else text
                row.append(text + (f" ({st['n']} of {want} seeds)" if st["n"] and st["n"] < want else ""))
        shown = f"{label} {(marks or {})[label]}" if label in (marks or {}) else label
        lines.append(f"| {shown} | " + " | ".join(row) + " |")
    record = {
        "splits": splits,
        "metrics": metrics,
        "rows": rows,
        "table": stats,
        "missing": missing,
        "unfinished": unfinished,
    }
    return "\n".join(lines), record


def _stats(values: list[float]) -> dict[str, Any]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.mean(kept), "std": statistics.stdev(kept) if len(kept) > 1 else math.nan, "n": len(kept)}


def recorded_cells(
    study, out: Path, files: list[str], runs: bool = True, cells: list | None = None
) -> tuple[dict[str, dict], list[str]]:
    """Cells of earlier records of this study (``OUT/<name>.json`` files that ``study_report``
    wrote), by the run directory each would have under ``out``, for the planned cells whose run
    directory holds no ``results.json`` (every planned cell if not ``runs``): ``{run_dir: entry}``
    of those whose config digest equals the planned cell's, and the run directories of those that
    differ (another configuration: not taken); ``cells``: the study's planned cells, if the caller
    has them. A cell recorded before records held digests
    (``config_digest`` null, a record converted from an older format) is taken as it is; its
    record's ``provenance`` says where it came from."""
    digests = {
        str(c.run_dir): c.digest
        for c in (cells if cells is not None else study.cells(out))
        if not (runs and (c.run_dir / "results.json").is_file())
    }
    taken: dict[str, dict] = {}
    stale: list[str] = []
    for file in files:
        try:
            record = json.loads(Path(file).read_text())
            entries = [e for splits in record["rows"].values() for cells in splits.values() for e in cells]
            where = {str(out / Path(e["run_dir"]).relative_to(record["out"])): e for e in entries}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FedmoapError(
                f"report: --recorded {file} is not a study record ({' '.join(str(exc).split())[:200]})"
            ) from None
        for run_dir, entry in where.items():
            if run_dir not in digests or run_dir in taken:
                continue
            if entry.get("config_digest") in (digests[run_dir], None):
                taken[run_dir] = {**entry, "run_dir": run_dir, "recorded": str(file)}
            else:
                stale.append(run_dir)
    return taken, stale


def report_files(study, out: Path) -> tuple[Path, Path]:
    """The files :func:`study_report` writes under ``out``: ``<name>.md`` and ``<name>.json``."""
    return out / f"{study.name}.md", out / f"{study.name}.json"


def record_table(study, record: str | Path) -> str:
    """The study's table from its record alone (``evidence/<name>.json``), the table README.md and
    the docs show: no run directory is read and nothing is written. Every cell must be in the
    record with the config digest the study file gives it today, so a record left behind by a
    changed study is refused, naming what differs. The cells are planned under the directory the
    record was made in (a split file's path is part of a cell's digest)."""
    try:
        out = Path(json.loads(Path(record).read_text())["out"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedmoapError(f"{record} is not a study record ({' '.join(str(exc).split())[:200]})") from None
    cells = study.cells(out)
    taken, stale = recorded_cells(study, out, [str(record)], runs=False, cells=cells)
    planned = {
        v.label: {s: [(seed, out / s / f"seed{seed}" / v.key) for seed in v.seeds] for s in v.splits}
        for v in study.variants
    }
    gone = [
        str(p)
        for rows in planned.values()
        for c in rows.values()
        for _, p in c
        if str(p) not in taken and str(p) not in stale
    ]
    if stale or gone:
        raise FedmoapError(
            f"{record}: not the record of {study.path} as it is: {len(stale)} cells with another config digest, "
            f"{len(gone)} cells missing (first: {(stale + gone)[0]}); rerun the study and write its record"
        )
    settings = settings_of(study, cells)
    table, _ = study_table(
        planned, study.table_splits, study.metrics, recorded=taken, runs=False, marks=settings.marks()
    )
    return table + "\n\n" + "\n".join(settings_lines(settings))


def provenance(study) -> dict[str, Any]:
    """What made a record: the code's commit (``git describe``: ``-dirty`` if the working tree
    had changes), the machine, the threads the study's runs used and when."""
    import datetime
    import os
    import platform
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "commit": commit or None,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs",
        "host": platform.node(),
        "threads": study.base.get("fabric.threads"),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def study_report(
    study, out: str | Path | None = None, recorded: list[str] | None = None, mixed_ok: bool = False
) -> str:
    """The study's table from its run directories under ``out`` (finished runs only; nothing is
    run): returns the Markdown and writes it to ``OUT/<name>.md`` and, with every run's values
    per seed (fractions), its seconds (``OUT/seconds.json``, written by ``sweep --run``) and
    config digest, to ``OUT/<name>.json``. ``recorded``: earlier ``<name>.json`` records whose
    cells stand in for run directories that are gone (:func:`recorded_cells`). A row whose cells
    ran different method code is refused unless ``mixed_ok`` (:mod:`fedmoap.run.studies.code`)."""
    out = Path(out) if out is not None else study.default_out()
    markdown, json_file = report_files(study, out)
    for file in (markdown, json_file):
        check_output_file(file, "--out")
    planned = {
        v.label: {s: [(seed, out / s / f"seed{seed}" / v.key) for seed in v.seeds] for s in v.splits}
        for v in study.variants
    }
    book = out / "seconds.json"
    try:
        seconds = {str(out / rel): s for rel, s in json.loads(book.read_text()).items()} if book.is_file() else {}
    except (OSError, ValueError, AttributeError) as exc:
        raise FedmoapError(f"report: {book} is unreadable ({' '.join(str(exc).split())[:200]})") from None
    cells = study.cells(out)
    taken, stale = recorded_cells(study, out, recorded, cells=cells) if recorded else ({}, [])
    settings = settings_of(study, cells)
    table, record = study_table(planned, study.table_splits, study.metrics, seconds, taken, marks=settings.marks())
    used = sum(1 for splits in record["rows"].values() for cells in splits.values() for e in cells if "recorded" in e)
    if used or stale:
        table += (
            f"\n\n{used} of the cells above are taken from {', '.join(recorded or [])} (their run directories"
            f" are gone; same config digest); {len(stale)} recorded cells with another digest were left out."
        )
        record["recorded_stale"] = stale
    mixed, unknown = mixed_code({c.variant.label: type(c.cfg.method) for c in cells}, record["rows"])
    if mixed and not mixed_ok:
        raise FedmoapError(
            f"report: {'; '.join(mixed)}: a row would compare two implementations as one "
            "(rerun its cells, or --mixed-code to mix them and say so under the table)"
        )
    if mixed or unknown:
        table += (
            "\n\n"
            + "; ".join(
                ([f"Mixed code: {'; '.join(mixed)}"] if mixed else [])
                + ([f"{unknown} cells name no code this checkout can compare"] if unknown else [])
            )
            + "."
        )
    table += "\n\n" + "\n".join(settings_lines(settings))
    record["settings"] = {"common": settings.common, "differs": settings.differs}

    def strict(obj: object) -> object:  # JSON without NaN
        if isinstance(obj, float) and math.isnan(obj):
            return None
        if isinstance(obj, dict):
            return {k: strict(v) for k, v in obj.items()}
        return [strict(v) for v in obj] if isinstance(obj, list) else obj

    record = {
        "study": study.name,
        "description": study.description,
        "file": str(study.path),
        "out": str(out),
        "seeds": study.seeds,
        "provenance": provenance(study),
        **record,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(markdown, f"# {study.name}\n\n{study.description}\n\n{table}\n")
    atomic_write_text(json_file, json.dumps(strict(record), indent=1, allow_nan=False, default=str))
    return table
