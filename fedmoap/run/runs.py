"""Reading run directories: a :class:`Run` is one directory's ``config.yaml`` and ``results.json``
(whose schema, read and written, is :mod:`fedmoap.federation.results`); :mod:`fedmoap.run.report`
makes the tables.

Scripts and benchmarks read a run through :func:`read_run` (a finished or running run, its shape
checked), or the file alone through :func:`fedmoap.federation.results.read_results` /
:func:`~fedmoap.federation.results.rounds_done` (e.g. to tell whether a run has finished)::

    from fedmoap.run import runs
    run = runs.read_run("runs/x")
    run.finished, run.metrics()["final"]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from fedmoap.errors import FedmoapError
from fedmoap.federation.results import CLIENT_MODES, client_accs, read_results, summary_metrics

__all__ = ["Run", "load_runs", "read_run", "flatten"]


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
        return summary_metrics(self.results.get("summary", {}))

    def client_curves(self) -> dict[str, list[tuple[int, float]]]:
        """Client id -> [(round, local accuracy), ...] over the evaluated rounds."""
        curves: dict[str, list[tuple[int, float]]] = {}
        for r in self.evaluated:
            for cid, acc in client_accs(r).items():
                curves.setdefault(cid, []).append((r["round"], acc))
        return curves

    def final_client_accs(self, mode: str = "local") -> dict[str, float]:
        """Client id -> final-round accuracy in ``mode`` (local, global, neighbor; base2novel's
        ``b2n.<metric>``; unseen, unseen.adapted)."""
        return client_accs(self.evaluated[-1], mode) if self.evaluated else {}


# ----- reading ---------------------------------------------------------------------------------
def load_runs(paths: Iterable[str | Path], warn: Any = None) -> list[Run]:
    """The runs under ``paths``: each a run directory (holding ``results.json``) or a directory
    whose sub-directories hold runs (searched recursively). An unreadable run or a path with no
    run raises :class:`FedmoapError` naming it. ``warn(message)`` is told of unfinished runs. A run
    found inside another found run's directory (``fedmoap mia``'s shadow runs) is not listed."""
    runs: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FedmoapError(f"report: {p} does not exist")
        found = (
            [p]
            if (p / "results.json").is_file()
            else sorted({f.parent for f in p.rglob("results.json")})
            if p.is_dir()
            else []
        )
        if not found:
            raise FedmoapError(f"report: {p} holds no run (no results.json in it or below it)")
        found = [d for d in found if not any(o in d.parents for o in found)]  # e.g. fedmoap mia's shadow runs
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
        results = read_results(path)
    except FileNotFoundError as exc:
        raise FedmoapError(f"report: {path} is not a run directory ({Path(exc.filename).name} is missing)") from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise FedmoapError(
            f"report: {path} has an unreadable config.yaml or results.json ({' '.join(str(exc).split())[:200]})"
        ) from None
    if not isinstance(config, dict) or not isinstance(results, dict) or "summary" not in results:
        raise FedmoapError(f"report: {path} does not hold a fedmoap run's config.yaml and results.json")
    try:
        run = Run(path, config, results, flatten(config, results))
        _check_shape(run)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise FedmoapError(
            f"report: {path}: results.json or config.yaml does not have the shape fedmoap "
            f"writes ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        ) from None
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
    for mode in CLIENT_MODES:
        run.final_client_accs(mode)
    str(run.method), run.dataset, run.seed


def flatten(config: dict[str, Any], results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat settings of a config: ``method`` (the short name results.json records, else the
    class path), ``method.<knob>``, ``<section>.<key>`` and top-level values."""
    from fedmoap.config.digest import with_added_defaults

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
