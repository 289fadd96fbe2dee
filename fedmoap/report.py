"""``fedmoap report``: the paper-style table of a set of runs (a sweep's run directories).

Each run directory holds ``config.yaml`` and ``results.json``. Runs are grouped by dataset,
method and the settings that differ between runs of the same dataset and method (e.g.
``method.lam``; ``--group-by`` names them instead), and every group reports the mean ± sample
standard deviation over its seeds of the final round's mean per-client accuracy, of the mean
over the last five evaluated rounds, and of each evaluation mode's final numbers where present.

Used by ``fedmoap report RUN_DIR... [--format markdown|csv] [--layout long|paper]`` and by the
notebooks (``notebooks/tables_and_curves.ipynb``)::

    from fedmoap import report
    runs = report.load_runs(["runs/sweep"])
    print(report.render(report.summarize(runs), "markdown", layout="paper"))
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from fedmoap.errors import FedmoapError

METRICS: dict[str, str] = {
    "final": "final round, mean per-client accuracy",
    "last5": "mean over the last 5 evaluated rounds",
    "global": "global mode, final round",
    "neighbor": "neighbor mode, final round",
    "b2n.local": "base-to-novel: local, final round",
    "b2n.base": "base-to-novel: base, final round",
    "b2n.novel": "base-to-novel: novel, final round",
    "b2n.hm": "base-to-novel: HM(base, novel), mean over clients, final round",
    "b2n.hm3": "base-to-novel: HM(local, base, novel), mean over clients, final round",
    "unseen": "held-out clients without adaptation, final round",
    "unseen.adapted": "held-out clients after few-shot adaptation, final round",
    **{f"{mode}.{part}": f"{mode}: {what}, mean over target domains, final round"
       for mode in ("xdomain", "lodo", "xdataset")
       for part, what in (("global", "global component"), ("personal", "clients' own models"))},
}
"""Column name -> what it is (all accuracies, shown in %)."""
IGNORED = {"seed", "data.split_file", "data.path", "model.cache_dir", "data.feature_cache",
           "data.feature_batch_size", "train.eval_batch_size", "fed.keep_checkpoints", "fed.eval_every",
           "fabric.accelerator", "fabric.devices", "fabric.num_nodes", "fabric.strategy", "fabric.threads"}
"""Settings that never separate groups (seeds, paths, and what does not change results)."""


@dataclass
class Run:
    """One run directory: its config, its results and what the table needs of them."""

    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    """Flat settings: ``method`` (short name), ``method.<knob>``, ``<section>.<key>``, ``seed``."""

    @property
    def method(self) -> str:
        return str(self.settings["method"])

    @property
    def dataset(self) -> str:
        source = str(self.settings.get("data.source", "?")).rstrip("/")
        return source.rsplit("/", 1)[-1] if "/" in source and Path(source).is_absolute() else source

    @property
    def seed(self) -> Any:
        return self.settings.get("seed")

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        return [r for r in self.results.get("rounds", []) if "mean_acc" in r]

    @property
    def finished(self) -> bool:
        rounds = self.results.get("rounds", [])
        return bool(rounds) and rounds[-1]["round"] >= int(self.settings.get("fed.rounds", 0))

    def metrics(self) -> dict[str, float]:
        """The run's value of every :data:`METRICS` column it has (fractions; NaN for null)."""
        s, out = self.results.get("summary", {}), {}
        out["final"], out["last5"] = _num(s.get("final_mean_acc")), _num(s.get("last5_mean_acc"))
        for mode in ("global", "neighbor"):
            if mode in s:
                out[mode] = _num(s[mode]["final_mean_acc"])
        if "base2novel" in s:
            out.update({f"b2n.{k}": _num(v) for k, v in s["base2novel"]["final"].items()})
        unseen = s.get("unseen_clients", {})
        if "no_adaptation" in unseen:
            out["unseen"] = _num(unseen["no_adaptation"]["final_mean_acc"])
        if "adapted" in unseen:
            out["unseen.adapted"] = _num(unseen["adapted"]["final_mean_acc"])
        for mode in ("xdomain", "lodo", "xdataset"):
            for part in ("global", "personal") if mode in s else ():
                out[f"{mode}.{part}"] = _num(s[mode]["final"][f"mean/{part}"])
        return out

    def client_curves(self) -> dict[str, list[tuple[int, float]]]:
        """Client id -> [(round, local accuracy), ...] over the evaluated rounds."""
        curves: dict[str, list[tuple[int, float]]] = {}
        for r in self.evaluated:
            for cid, v in r["clients"].items():
                curves.setdefault(cid, []).append((r["round"], _num(v["acc"])))
        return curves

    def final_client_accs(self, mode: str = "local") -> dict[str, float]:
        """Client id -> final-round accuracy in ``mode`` (local, global, neighbor; base2novel's
        ``b2n.<metric>``; unseen, unseen.adapted)."""
        if not self.evaluated:
            return {}
        last = self.evaluated[-1]
        if mode == "local":
            entry = last
        elif mode in ("global", "neighbor"):
            entry = last.get(mode, {})
        elif mode.startswith("b2n."):
            key = mode.split(".", 1)[1]
            return {c: _num(v[key]) for c, v in last.get("base2novel", {}).get("clients", {}).items()}
        elif mode in ("unseen", "unseen.adapted"):
            part = "adapted" if mode.endswith("adapted") else "no_adaptation"
            entry = last.get("unseen_clients", {}).get(part, {})
        else:
            raise FedmoapError(f"report: unknown mode {mode!r}")
        return {c: _num(v["acc"]) for c, v in entry.get("clients", {}).items()}


@dataclass
class Group:
    """Runs of one (dataset, method, settings) cell, over seeds."""

    dataset: str
    method: str
    settings: dict[str, Any]
    runs: list[Run]

    @property
    def label(self) -> str:
        """The method with its distinguishing settings, e.g. ``pfedmoap (lam=0.5)``."""
        if not self.settings:
            return self.method
        parts = [f"{k.removeprefix('method.')}={_show(v)}" for k, v in self.settings.items()]
        return f"{self.method} ({', '.join(parts)})"

    @property
    def seeds(self) -> list[Any]:
        return sorted((r.seed for r in self.runs), key=str)

    def stats(self, metric: str) -> tuple[float, float, int]:
        """(mean, sample std, number of runs) of ``metric`` over the group's runs that have it;
        the std is NaN with fewer than two values."""
        values = [v for r in self.runs if not math.isnan(v := r.metrics().get(metric, math.nan))]
        if not values:
            return math.nan, math.nan, 0
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), sd, len(values)


# ----- reading ---------------------------------------------------------------------------------
def load_runs(paths: Iterable[str | Path], warn: Any = None) -> list[Run]:
    """The runs under ``paths``: each a run directory (holding ``results.json``) or a directory
    whose sub-directories hold runs (searched recursively). An unreadable run or a path with no
    run raises :class:`FedmoapError` naming it. ``warn(message)`` is told of unfinished runs."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FedmoapError(f"report: {p} does not exist")
        found = [p] if (p / "results.json").is_file() else sorted(
            {f.parent for f in p.rglob("results.json")}) if p.is_dir() else []
        if not found:
            raise FedmoapError(f"report: {p} holds no run (no results.json in it or below it)")
        runs += [read_run(d) for d in found]
    seen = set()
    unique = []
    for run in runs:
        if run.path.resolve() not in seen:
            seen.add(run.path.resolve())
            unique.append(run)
    if warn is not None:
        for run in unique:
            if not run.finished:
                last = run.results.get("rounds", [{}])[-1].get("round", 0) if run.results.get("rounds") else 0
                warn(f"{run.path} is unfinished (round {last} of {run.settings.get('fed.rounds')})")
    return unique


def read_run(path: Path) -> Run:
    """One run directory's ``config.yaml`` and ``results.json``."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
        results = json.loads((path / "results.json").read_text())
    except FileNotFoundError as exc:
        raise FedmoapError(f"report: {path} is not a run directory ({Path(exc.filename).name} is missing)") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise FedmoapError(f"report: {path} has an unreadable config.yaml or results.json "
                           f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(config, dict) or not isinstance(results, dict) or "summary" not in results:
        raise FedmoapError(f"report: {path} does not hold a fedmoap run's config.yaml and results.json")
    try:
        run = Run(path, config, results, flatten(config, results))
        _check_shape(run)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise FedmoapError(f"report: {path}: results.json or config.yaml does not have the shape fedmoap "
                           f"writes ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    return run


def _check_shape(run: Run) -> None:
    """Read everything the table and the notebooks read of a run, so that a malformed file is
    refused here, naming its run, rather than failing later without a name."""
    rounds = run.results.get("rounds", [])
    if not isinstance(rounds, list) or not isinstance(run.results["summary"], dict):
        raise TypeError("'rounds' must be a list and 'summary' an object")
    for r in rounds:
        if not isinstance(r, dict) or not isinstance(r["round"], int):
            raise TypeError("every entry of 'rounds' must be an object with an integer 'round'")
    run.finished, run.metrics(), run.client_curves()
    for mode in ("local", "global", "neighbor", "unseen", "unseen.adapted") + tuple(
            f"b2n.{k}" for k in ("local", "base", "novel", "hm", "hm3")):
        run.final_client_accs(mode)
    str(run.method), run.dataset, run.seed


def flatten(config: dict[str, Any], results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat settings of a config: ``method`` (the short name results.json records, else the
    class path), ``method.<knob>``, ``<section>.<key>`` and top-level values."""
    from fedmoap.config import with_added_defaults

    out: dict[str, Any] = {}
    config = with_added_defaults(config)  # runs made before a section or key existed
    for key, value in config.items():
        if key == "method" and isinstance(value, dict):
            out["method"] = (results or {}).get("method") or value.get("class_path")
            out.update({f"method.{k}": v for k, v in (value.get("init_args") or {}).items()})
        elif isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


# ----- grouping --------------------------------------------------------------------------------
def varying_settings(runs: list[Run]) -> list[str]:
    """Settings whose values differ between two runs of the same dataset and method (the seed,
    paths and result-neutral settings excepted)."""
    by_cell: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_cell.setdefault((run.dataset, run.method), []).append(run)
    keys = set()
    for cell in by_cell.values():
        for key in {k for r in cell for k in r.settings} - IGNORED - {"method", "data.source"}:
            if len({_show(r.settings.get(key)) for r in cell}) > 1:
                keys.add(key)
    return sorted(keys)


def summarize(runs: list[Run], group_by: list[str] | None = None) -> list[Group]:
    """Groups of runs by (dataset, method, settings): ``group_by`` names the settings (flat keys
    such as ``method.lam`` or ``data.alpha``); default :func:`varying_settings`."""
    keys = varying_settings(runs) if group_by is None else list(group_by)
    known = {k for r in runs for k in r.settings}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise FedmoapError(f"report: --group-by {', '.join(unknown)}: no run has such a setting "
                           f"(e.g. {', '.join(sorted(known - {'method'})[:4])})")
    groups: dict[tuple, Group] = {}
    for run in runs:
        settings = {k: run.settings[k] for k in keys if k in run.settings}
        key = (run.dataset, run.method, tuple((k, _show(v)) for k, v in settings.items()))
        groups.setdefault(key, Group(run.dataset, run.method, settings, [])).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.dataset, g.method, g.label))


def duplicate_seeds(groups: list[Group]) -> list[str]:
    """Groups holding two runs with the same seed (a sign that --group-by misses a setting)."""
    return [f"{g.dataset} / {g.label}: seeds {g.seeds}" for g in groups if len(set(map(str, g.seeds))) < len(g.seeds)]


# ----- rendering -------------------------------------------------------------------------------
def columns(groups: list[Group]) -> list[str]:
    """The :data:`METRICS` columns some run of ``groups`` has, in that order."""
    have = {m for g in groups for r in g.runs for m in r.metrics()}
    return [m for m in METRICS if m in have]


def cell(mean: float, sd: float, digits: int = 2) -> str:
    """``mean ± sd`` in percent; the mean alone for a single run; ``–`` for nothing."""
    if math.isnan(mean):
        return "–"
    if math.isnan(sd):
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * sd:.{digits}f}"


def long_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the long table: one row per group, one column per metric."""
    metrics = columns(groups)
    header = ["dataset", "method", "runs", "seeds"] + metrics
    rows = []
    for g in groups:
        rows.append([g.dataset, g.label, str(len(g.runs)), ",".join(map(str, g.seeds))]
                    + [cell(*g.stats(m)[:2]) for m in metrics])
    return header, rows


def paper_rows(groups: list[Group], metric: str = "final") -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper's layout: methods (with their settings) x datasets, each
    cell ``metric``'s mean ± std over seeds."""
    if metric not in METRICS:
        raise FedmoapError(f"report: --metric {metric!r} is not one of {', '.join(METRICS)}")
    datasets = sorted({g.dataset for g in groups})
    labels = list(dict.fromkeys(g.label for g in sorted(groups, key=lambda g: g.label)))
    by = {(g.label, g.dataset): g for g in groups}
    rows = []
    for label in labels:
        row = [label]
        for d in datasets:
            g = by.get((label, d))
            row.append(cell(*g.stats(metric)[:2]) if g else "")
        rows.append(row)
    return ["method"] + datasets, rows


def render(groups: list[Group], fmt: str = "markdown", layout: str = "long", metric: str = "final") -> str:
    """The table as Markdown or CSV. CSV of the long layout gives numbers (percent, 4 decimals)
    in ``<metric>_mean`` / ``<metric>_std`` columns."""
    if fmt not in ("markdown", "csv"):
        raise FedmoapError(f"report: --format {fmt!r} is not markdown or csv")
    if layout not in ("long", "paper"):
        raise FedmoapError(f"report: --layout {layout!r} is not long or paper")
    if fmt == "csv" and layout == "long":
        metrics = columns(groups)
        header = ["dataset", "method", "runs", "seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        rows = []
        for g in groups:
            row = [g.dataset, g.label, str(len(g.runs)), " ".join(map(str, g.seeds))]
            for m in metrics:
                mean, sd, _ = g.stats(m)
                row += ["" if math.isnan(v) else f"{100 * v:.4f}" for v in (mean, sd)]
            rows.append(row)
    else:
        header, rows = long_rows(groups) if layout == "long" else paper_rows(groups, metric)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell_ or " " for cell_ in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
