"""Parsing the command line into a :class:`~fedmoap.federation.config.RunConfig` (``fedmoap fit``) and the
other commands' arguments: the parser generated from the config dataclasses by jsonargparse,
short method names, a method's own defaults, and one-line messages for bad input."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser, get_loader, set_loader, set_parsing_settings

from fedmoap.config import yamlfile
from fedmoap.config.typecheck import type_problems
from fedmoap.errors import FedmoapError

if TYPE_CHECKING:
    from fedmoap.federation.config import RunConfig


__all__ = [
    "fit_parser",
    "sweep_parser",
    "parse_fit",
    "parser_message",
    "method_class_problem",
    "short_method_names",
    "report_parser",
]


def _strict_yaml() -> None:
    """Config files and values: no repeated keys, attribute docstrings as help."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    if not hasattr(get_loader("yaml"), "__wrapped__"):
        set_loader("yaml", yamlfile.strict(get_loader("yaml")), exceptions=(yaml.YAMLError,))


@functools.lru_cache(maxsize=1)
def fit_parser() -> ArgumentParser:
    """``fedmoap fit``'s parser, generated from the config dataclasses (imports every method);
    built once per process (a study parses hundreds of runs) and never changed after."""
    _strict_yaml()
    from fedmoap.federation.config import RunConfig
    from fedmoap.methods import registry

    methods = ", ".join(f"{name} ({cls.__doc__.split(':')[0].strip()})" for name, cls in registry().items())
    fit = ArgumentParser(
        prog="fedmoap fit",
        exit_on_error=False,
        description="Train (or resume) a federated run. With no --config: the "
        "offline default (packaged towers, Fashion-MNIST, pFedMoAP).",
        epilog=f"Methods (--method NAME or a class path; --method.help NAME lists a method's knobs): {methods}.",
    )
    fit.add_argument("--config", action=ActionConfigFile, help="YAML file of settings")
    fit.add_class_arguments(RunConfig)
    fit.add_argument(
        "--run_dir",
        type=str | None,
        default=None,
        help="Output directory; re-running on it resumes. Default: runs/<method>-<time>",
    )
    fit.add_argument("--progress", type=bool, default=True, help="Show progress bars")
    return fit


def sweep_parser() -> ArgumentParser:
    """``fedmoap sweep``'s parser (imports no torch)."""
    _strict_yaml()
    sweep = ArgumentParser(
        prog="fedmoap sweep",
        exit_on_error=False,
        description="Run the runs of a study (--study FILE) or of a grid (--config FILE --grid "
        "KEY=V1,V2 ... --seeds S ...: every point of the grid with every seed; a grid is a study named "
        "grid, see docs/studies.md) here, in order (--run), list them (--list) or write them as a SLURM "
        "array (--slurm).",
    )
    sweep.add_argument("--study", type=str | None, default=None, help="a study file (configs/studies/NAME.yaml)")
    sweep.add_argument("--config", type=str | None, default=None, help="grid: base config of every run")
    sweep.add_argument(
        "--grid",
        type=str,
        nargs="+",
        default=[],
        help="grid: overrides to cross, e.g. method=promptfl,pfedmoap pfedmoap.lam=0,0.5 (a knob goes only "
        "to the methods that have it; data.* and eval.* keys make the splits)",
    )
    sweep.add_argument("--seeds", type=int | None, nargs="+", default=None, help="grid: seeds (default 0 1 2)")
    sweep.add_argument("--run", action="store_true", help="run the cells here, in order (finished ones are skipped)")
    sweep.add_argument("--slurm", action="store_true", help="write OUT/NAME.sweep.txt for slurm/array.sbatch")
    sweep.add_argument(
        "--list", action="store_true", help="print every cell: run dir, state, config digest, fit arguments"
    )
    sweep.add_argument(
        "--out",
        type=str | None,
        default=None,
        help="the cells' directory (default runs/studies/NAME; a grid's runs/sweep)",
    )
    sweep.add_argument("--only", type=str, nargs="+", default=None, help="only these variants (labels or keys)")
    sweep.add_argument(
        "--set",
        type=str,
        nargs="+",
        default=[],
        help="KEY=VALUE overrides of every run that do not change results (fabric.threads=1)",
    )
    return sweep


def parse_fit(argv: list[str]) -> tuple[RunConfig, str | None, bool]:
    """Parse ``fedmoap fit ...`` arguments into a :class:`RunConfig`; a bad key, value or config
    file raises :class:`FedmoapError` with the parser's message."""
    from fedmoap.federation.config import RunConfig

    parser = fit_parser()
    try:
        ns = parser.parse_args(short_method_names(argv[1:] if argv[:1] == ["fit"] else argv))
    except ArgumentError as exc:
        raise FedmoapError(f"{parser_message(exc)} (see `fedmoap fit --help`)") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(ns)
    cfg = RunConfig(**{f.name: init[f.name] for f in dataclasses.fields(RunConfig)})
    problem = method_class_problem(type(cfg.method))
    if problem:
        raise FedmoapError(problem)
    cfg.method = _own_defaults(cfg.method, _explicit_method_knobs(argv))
    problems = type_problems(cfg)
    if problems:
        raise FedmoapError("; ".join(problems))
    return cfg, init["run_dir"], init["progress"]


def parser_message(exc: Exception) -> str:
    """The parser's error on one line, a method knob named as ``method.KNOB (class path)``."""
    message = " ".join(str(exc).split())
    message = re.sub(
        r'Parser key "method": Problem with given class_path \'([\w.]+)\': Parser key "(\w+)":',
        r"method.\2 (\1):",
        message,
    )
    return re.sub(r"<class '(\w+)'>", r"\1", message)


def method_class_problem(cls: type) -> str | None:
    """Why ``cls`` cannot be a run's method (None if it can): it must be a dataclass subclass of
    :class:`~fedmoap.methods.base.Method` with its client and server classes."""
    path = f"{cls.__module__}.{cls.__qualname__}"
    if not (dataclasses.is_dataclass(cls) and hasattr(cls, "client_class") and hasattr(cls, "server_class")):
        return (
            f"method: {path} is not a complete method (a @dataclass subclass of "
            "fedmoap.methods.base.Method that sets client_class and server_class)"
        )
    return None


def _own_defaults(method, explicit: set[str]):
    """The method with its own defaults for every knob the user did not set. (When a config's
    method is replaced on the command line, the parser carries the old method's values over,
    defaults included; only the knobs that were set should carry.)"""
    kept = {f.name: getattr(method, f.name) for f in dataclasses.fields(method) if f.name in explicit}
    return type(method)(**kept)


def _explicit_method_knobs(argv: list[str]) -> set[str]:
    """Names of the method knobs set on the command line or in a ``--config`` file."""
    knobs: set[str] = set()
    for i, arg in enumerate(argv):
        key = arg.partition("=")[0]
        if key.startswith("--method.") and key != "--method.help":
            knobs.add(key[len("--method.") :].split(".")[0])
        value = arg.partition("=")[2] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
        if key == "--method" and value.lstrip().startswith("{"):
            try:
                knobs |= set(_init_args(yamlfile.load(value)))
            except yaml.YAMLError as exc:
                raise FedmoapError(f"--method {value}: {' '.join(str(exc).split())}") from None
        if key == "--config" and Path(value).is_file():
            knobs |= set(_init_args(yamlfile.read_config(value).get("method")))
    return knobs


def _init_args(spec) -> dict:
    return (spec.get("init_args") or {}) if isinstance(spec, dict) else {}


def short_method_names(argv: list[str]) -> list[str]:
    """Replace a method's short name (``--method pfedmoap``, ``method: promptfl`` or
    ``class_path: coop`` in a ``--config`` file) by its class path, which the parser needs."""
    from fedmoap.methods import resolve

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in ("--method", "--method.help") and eq:
            out.append(f"{key}={resolve(value)}")
        elif arg in ("--method", "--method.help") and i + 1 < len(argv):
            out += [arg, resolve(argv[i + 1])]
            i += 1
        elif arg == "--config" and i + 1 < len(argv):
            out += [arg, _config_with_class_path(argv[i + 1])]
            i += 1
        elif key == "--config" and eq:
            out += [key, _config_with_class_path(value)]
        else:
            out.append(arg)
        i += 1
    return out


def _config_with_class_path(path: str) -> str:
    """The config file's path, or its text with the method's short name resolved where it has
    one; a file that is not a readable mapping of settings is refused here, named (a path that
    does not exist is left to the parser, which also takes YAML text in its place)."""
    from fedmoap.methods import resolve

    if not Path(path).exists():
        return path
    cfg = yamlfile.read_config(path)
    method = cfg.get("method")
    if isinstance(method, str) and resolve(method) != method:
        cfg["method"] = resolve(method)
    elif (
        isinstance(method, dict)
        and isinstance(method.get("class_path"), str)
        and resolve(method["class_path"]) != method["class_path"]
    ):
        cfg["method"] = {**method, "class_path": resolve(method["class_path"])}
    else:
        return path
    return yaml.safe_dump(cfg, sort_keys=False)


# ----- fedmoap report (fedmoap/run/report.py) -----------------------------------------------------
def report_parser() -> ArgumentParser:
    """``fedmoap report``'s parser (imports no torch)."""
    from fedmoap.run.report import METRICS

    _strict_yaml()
    report = ArgumentParser(
        prog="fedmoap report",
        exit_on_error=False,
        description="Print the table of a set of runs (run directories, or "
        "directories holding them, e.g. a sweep's --out): per dataset, method "
        "and the settings that differ between runs of the same method, the mean ± "
        "sample std over seeds of the final and last-5 accuracy and of each "
        "evaluation mode's final numbers (%).",
    )
    report.add_argument("runs", type=str, nargs="*", help="run directories or roots containing them")
    report.add_argument(
        "--study",
        type=str | None,
        default=None,
        help="a study file: print its table (and write OUT/NAME.md, OUT/NAME.json)",
    )
    report.add_argument(
        "--out", type=str | None, default=None, help="--study: its output directory (default runs/studies/NAME)"
    )
    report.add_argument(
        "--recorded",
        type=str,
        nargs="+",
        default=[],
        help="--study: earlier records of it (OUT/NAME.json) to take a cell from when its run directory "
        "is gone, only where the recorded config digest equals the cell's; the table says how many",
    )
    report.add_argument(
        "--plot",
        type=str | None,
        default=None,
        help="--study: also draw each row's mean accuracy per round with its spread over seeds to this "
        "file (.png, .svg or .pdf; needs matplotlib)",
    )
    report.add_argument(
        "--mixed-code",
        action="store_true",
        help="--study: let a row mix cells made by commits whose method code differs (said under the table)",
    )
    report.add_argument("--format", type=Literal["markdown", "csv"], default="markdown", help="markdown or csv")
    report.add_argument(
        "--group-by",
        type=str,
        nargs="+",
        default=None,
        help="settings that separate groups besides dataset and method (flat keys, e.g. "
        "method.lam data.alpha); default: those that differ between runs of the same "
        "dataset and method",
    )
    report.add_argument(
        "--layout",
        type=Literal["long", "paper"],
        default="long",
        help="long: one row per group, one column per metric; paper: methods x datasets",
    )
    report.add_argument(
        "--metric",
        type=Literal[tuple(METRICS)],
        default="final",
        help="the metric of the paper layout's cells: " + "; ".join(f"{k}: {v}" for k, v in METRICS.items()),
    )
    return report
