"""Reading run directories: ``config.yaml`` and ``results.json`` (the one reader of
``results.json``; :mod:`fedmoap.run.report` re-exports it and makes the tables).

Scripts and benchmarks read a run through :func:`read_run` (a finished or running run, its shape
checked) or :func:`read_results` / :func:`rounds_done` (the file alone, e.g. to tell whether a
run has finished)::

    from fedmoap.run import runs
    run = runs.read_run("runs/x")
    run.finished, run.metrics()["final"]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from fedmoap.errors import FedmoapError


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
        for key in ("worst", "pooled"):
            if f"final_{key}_acc" in s:
                out[key] = _num(s[f"final_{key}_acc"])
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


def read_results(path: str | Path) -> dict[str, Any]:
    """A run directory's ``results.json`` as ``fedmoap fit`` wrote it (the one place it is
    parsed); raises ``FileNotFoundError`` if the run has none yet, ``ValueError`` if it is not
    JSON. :func:`read_run` checks its shape."""
    return json.loads((Path(path) / "results.json").read_text())


def rounds_done(path: str | Path) -> int:
    """The last round a run directory's ``results.json`` records (0: none, or no file yet)."""
    try:
        rounds = read_results(path).get("rounds") or []
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, AttributeError, KeyError, IndexError, TypeError) as exc:
        raise FedmoapError(f"report: {path}/results.json is unreadable ({' '.join(str(exc).split())[:200]})") from None
    return int(rounds[-1]["round"]) if rounds else 0


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
        f"b2n.{k}" for k in ("local", "base", "novel", "hm", "hm3")
    ):
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


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
