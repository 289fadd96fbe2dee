"""``fedmoap report``: the paper-style table of a set of runs (a sweep's run directories).

Each run directory holds ``config.yaml`` and ``results.json``. Runs are grouped by dataset,
method and the settings that differ between runs of the same dataset and method (e.g.
``method.lam``; ``--group-by`` names them instead), and every group reports the mean ± sample
standard deviation over its seeds of the final round's mean per-client accuracy, of the mean
over the last five evaluated rounds, and of each evaluation mode's final numbers where present.

Used by ``fedmoap report RUN_DIR... [--format markdown|csv] [--layout long|paper]`` and by the
notebooks (``notebooks/tables_and_curves.ipynb``)::

    from fedmoap.run import report, runs
    found = runs.load_runs(["runs/sweep"])
    print(report.render(report.summarize(found), "markdown", layout="paper"))

A study's table (``fedmoap report --study FILE``) is :mod:`fedmoap.run.studies.table`. Reading a run is
:mod:`fedmoap.run.runs`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from typing import Any

from fedmoap.config.sections import neutral_keys
from fedmoap.errors import FedmoapError
from fedmoap.federation.results import rounds_done
from fedmoap.run.runs import Run

__all__ = [
    "METRICS",
    "IGNORED",
    "Group",
    "mia_metrics",
    "run_metrics",
    "varying_settings",
    "summarize",
    "duplicate_seeds",
    "columns",
    "cell",
    "long_rows",
    "paper_rows",
    "render",
]

METRICS: dict[str, str] = {
    "final": "final round, mean per-client accuracy",
    "last5": "mean over the last 5 evaluated rounds",
    "worst": "final round, worst client's accuracy",
    "pooled": "final round, accuracy over all clients' test images pooled",
    "global": "global mode, final round",
    "neighbor": "neighbor mode, final round",
    "b2n.local": "base-to-novel: local, final round",
    "b2n.base": "base-to-novel: base, final round",
    "b2n.novel": "base-to-novel: novel, final round",
    "b2n.hm": "base-to-novel: HM(base, novel), mean over clients, final round",
    "b2n.hm3": "base-to-novel: HM(local, base, novel), mean over clients, final round",
    "unseen": "held-out clients without adaptation, final round",
    "unseen.adapted": "held-out clients after few-shot adaptation, final round",
    **{
        f"{mode}.{part}": f"{mode}: {what}, mean over target domains, final round"
        for mode in ("xdomain", "lodo", "xdataset")
        for part, what in (("global", "global component"), ("personal", "clients' own models"))
    },
    "mia.mlp": "membership inference (fedmoap mia): DP-FPL's attack MLP, mean per-class accuracy",
    "mia.loss": "membership inference (fedmoap mia): loss-threshold attack, mean per-class accuracy",
    "mia.mlp.auc": "membership inference: DP-FPL's attack MLP, AUC over all attacked samples (x 100)",
    "mia.loss.auc": "membership inference: loss-threshold attack, AUC over all attacked samples (x 100)",
}
"""Column name -> what it is (accuracies, and AUCs x 100, shown in %)."""
IGNORED = {f"{section}.{key}" for section, key in neutral_keys()} - {"fed.rounds"} | {
    "seed",
    "data.split_file",
    "data.path",
}
"""Settings that never separate groups: the seed, data paths, and every setting flagged neutral
but ``fed.rounds`` (neutral so that a run may be extended; runs of other lengths differ)."""


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
        values = [v for r in self.runs if not math.isnan(v := run_metrics(r).get(metric, math.nan))]
        if not values:
            return math.nan, math.nan, 0
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        return statistics.fmean(values), sd, len(values)


def mia_metrics(run: Run) -> dict[str, float]:
    """``mia.mlp``, ``mia.loss`` and their ``.auc`` from the run's ``mia/mia.json`` (``fedmoap mia``
    with its default output directory), if it attacked the run's last round; else nothing."""
    path = run.path / "mia" / "mia.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data["round"] != rounds_done(run.path):
            return {}
        attacks = data["attacks"]
        return {
            f"mia.{name}{suffix}": _num(attacks[key][field])
            for name, key in (("mlp", "mlp"), ("loss", "loss_threshold"))
            for suffix, field in (("", "accuracy"), (".auc", "auc"))
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedmoapError(
            f"report: {path} is not a readable fedmoap mia result "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        ) from None


def run_metrics(run: Run) -> dict[str, float]:
    """The run's :data:`METRICS` values: :meth:`Run.metrics` and :func:`mia_metrics`."""
    return {**run.metrics(), **mia_metrics(run)}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


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
        raise FedmoapError(
            f"report: --group-by {', '.join(unknown)}: no run has such a setting "
            f"(e.g. {', '.join(sorted(known - {'method'})[:4])})"
        )
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
    have = {m for g in groups for r in g.runs for m in run_metrics(r)}
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
        rows.append(
            [g.dataset, g.label, str(len(g.runs)), ",".join(map(str, g.seeds))]
            + [cell(*g.stats(m)[:2]) for m in metrics]
        )
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


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
