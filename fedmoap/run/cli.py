"""The command line: every command declared once in :data:`COMMANDS`, its module imported only when
it runs (``fedmoap --help`` and ``fedmoap report --help`` import no torch), and one error wrapper
(:func:`guarded`) for all of them.

Exit codes: 0 done; 2 bad input or a failed write (one line on stderr naming the culprit);
3 preempted by SIGUSR1/SIGTERM; 130 interrupted by Ctrl-C (SIGINT). After 2 (once fixed), 3 and
130, rerunning the same command resumes from the last checkpoint."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from jsonargparse import ArgumentError

from fedmoap.errors import FedmoapError
from fedmoap.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, Interrupted, Preempted, StoppedAtStartup, stop_flag

__all__ = [
    "Command",
    "fit",
    "sweep",
    "report",
    "EVAL_USAGE",
    "evaluate",
    "mia",
    "FLOWER_USAGE",
    "flower",
    "methods",
    "COMMANDS",
    "OWN_HELP",
    "overview",
    "guarded",
    "main",
]


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, its arguments as the overview shows them, what it does, and the
    function (``argv -> exit code``) that runs it."""

    name: str
    arguments: str
    summary: str
    run: Callable[[list[str]], int]


def fit(argv: list[str]) -> int:
    """``fedmoap fit``: train, or resume, a run (:mod:`fedmoap.run.fit`)."""
    flag = stop_flag()  # before the heavy imports: a preemption signal during start-up counts
    with flag.at_once():  # parsing and importing write nothing: a signal stops them at once
        from fedmoap.run.parse import parse_fit

        cfg, run_dir, progress = parse_fit(["fit", *argv])
        name = cfg.method.name or type(cfg.method).__name__
        run_dir = run_dir or str(Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}")
        from fedmoap.run.fit import fit as run_fit  # heavy imports only once the arguments are valid

    out = run_fit(cfg, run_dir, progress)
    rounds = out["rounds"]
    if rounds and out["rank"] == 0:
        last = rounds[-1]
        print(
            f"{name}: round {last['round']}: mean acc {last['mean_acc']:.4f} "
            f"(std {last['std_acc']:.4f}) -> {run_dir}/results.json  [set-up {out['setup_seconds']:.0f} s, "
            f"{out['features_computed']} images encoded; rounds {out['round_seconds']:.1f} s]"
        )
    return 0


def sweep(argv: list[str]) -> int:
    """``fedmoap sweep``: run, list or write as a SLURM array a study file or a grid, which is a study
    too (:mod:`fedmoap.run.studies`)."""
    from functools import partial

    from fedmoap.run.parse import sweep_parser

    ns = sweep_parser().parse_args(argv)
    from fedmoap.run.studies.execution import study_command

    if ns.study and (ns.config or ns.grid or ns.seeds is not None):
        raise FedmoapError("sweep: give --study FILE or a grid (--config, --grid, --seeds), not both")
    if ns.study:
        from fedmoap.run.studies.format import load_study

        make = partial(load_study, ns.study)
    elif ns.config or ns.grid:
        from fedmoap.run.studies.grid import grid_study

        make = partial(grid_study, ns.config, ns.grid, ns.seeds or [0, 1, 2], ns.out)
    else:
        raise FedmoapError("sweep: give --study FILE, or a grid: --config FILE [--grid KEY=V1,V2 ...] [--seeds S ...]")
    study_command(make, ns.run, ns.slurm, ns.list, ns.out, ns.only, ns.set)
    return 0


def report(argv: list[str]) -> int:
    """``fedmoap report``: the table of runs or of a study (:mod:`fedmoap.run.report`)."""
    from fedmoap.run.parse import report_parser

    ns = report_parser().parse_args(argv)
    if ns.study:
        import json

        from fedmoap.io import check_output_file
        from fedmoap.run.studies.format import load_study
        from fedmoap.run.studies.plot import check_plot_path, plot_record
        from fedmoap.run.studies.table import report_files, study_report

        if ns.plot:
            check_output_file(check_plot_path(ns.plot), "--plot")
        study = load_study(ns.study)
        print(study_report(study, ns.out, ns.recorded, ns.mixed_code))
        if ns.plot:
            json_file = report_files(study, Path(ns.out) if ns.out else study.default_out())[1]
            print(f"figure -> {plot_record(json.loads(json_file.read_text()), ns.plot)}")
        return 0
    if not ns.runs:
        raise FedmoapError("report: give run directories or --study FILE")
    from fedmoap.run import report as reports
    from fedmoap.run.runs import load_runs

    warnings: list[str] = []
    runs = load_runs(ns.runs, warn=warnings.append)
    groups = reports.summarize(runs, ns.group_by)
    warnings += [f"two runs with the same seed in {d}" for d in reports.duplicate_seeds(groups)]
    table = reports.render(groups, ns.format, ns.layout, ns.metric)
    for message in warnings:
        print(f"fedmoap: warning: {message}", file=sys.stderr)
    print(table)
    return 0


EVAL_USAGE = "RUN_DIR [--eval.modes [local,global] --method.KNOB V ...] [--out FILE]"


def evaluate(argv: list[str]) -> int:
    """``fedmoap eval``: evaluate a finished run again, with other modes or knobs
    (:mod:`fedmoap.run.reevaluate`); writes RUN_DIR/eval/<digest>.json or --out."""
    if not argv or argv[0].startswith("-"):
        raise FedmoapError(f"eval: usage: fedmoap eval {EVAL_USAGE}")
    run_dir, rest, out = argv[0], list(argv[1:]), None
    if "--out" in rest:
        i = rest.index("--out")
        if i + 1 >= len(rest):
            raise FedmoapError("--out needs a file name")
        out = rest[i + 1]
        del rest[i : i + 2]
    from fedmoap.run.reevaluate import reevaluate

    result, path = reevaluate(run_dir, rest, out)
    last = result["rounds"][-1]
    print(
        f"{result['method']}: round {last['round']} re-evaluated: mean acc {last['mean_acc']:.4f} "
        f"(std {last['std_acc']:.4f}) -> {path}"
    )
    return 0


def mia(argv: list[str]) -> int:
    """``fedmoap mia``: membership inference against a finished run's clients (:mod:`fedmoap.run.mia`)."""
    from fedmoap.run.mia.args import parse_mia

    run_dir, args = parse_mia(argv)
    from fedmoap.run.mia.run import run_mia, table

    result, path = run_mia(run_dir, args)
    target = result["target"]
    print(
        f"{result['method']}: membership inference on clients {target['clients']} "
        f"({target['samples']} samples, half members), {len(result['shadows'])} shadow federations"
    )
    print(table(result))
    print(f"-> {path}")
    return 0


FLOWER_USAGE = (
    "--config FILE [--section.key value ...] --run_dir DIR [--app APP_DIR] [--write_only] "
    "[--num_cpus N] [--client_cpus C] [--client_gpus G]"
)


def flower(argv: list[str]) -> int:
    """``fedmoap flower``: the run on Flower's Simulation Engine, one SuperNode per client, or a
    Flower App written for a deployment (:mod:`fedmoap.run.flower`)."""
    try:
        from fedmoap.run.flower.run import simulate, split_args, write_app
    except ImportError as exc:
        raise FedmoapError(
            f'fedmoap flower needs Flower ({exc.name} is missing): pip install "fedmoap[flower]"'
        ) from None
    from fedmoap.run.flower.checks import checked_config

    fit_args, opts = split_args(argv)
    cfg, run_dir = checked_config(fit_args)
    if opts.get("app"):
        path = write_app(Path(opts["app"]), fit_args, cfg.fed.rounds)
        print(
            f"Flower App -> {path}; on a SuperLink (flower-superlink --insecure "
            "--disable-runtime-dependency-installation) with one SuperNode per client "
            f"(--node-config 'partition-id=I fedmoap-dir=DIR'): flwr run {path.parent} deployment "
            f"(FLWR_HOME={path.parent / '.flwr'})"
        )
    elif opts.get("write_only"):
        raise FedmoapError("--write_only needs --app APP_DIR")
    if opts.get("write_only"):
        return 0
    simulate(fit_args, opts.get("num_cpus"), opts.get("client_cpus", 1), opts.get("client_gpus", 0.0))
    from fedmoap.federation.results import read_results

    last = read_results(run_dir)["rounds"][-1]
    print(
        f"{cfg.method.name or type(cfg.method).__name__} on Flower: round {last['round']}: mean acc "
        f"{last['mean_acc']:.4f} (std {last['std_acc']:.4f}) -> {run_dir}/results.json"
    )
    return 0


def methods(argv: list[str]) -> int:
    """``fedmoap methods``: what each method combines with (:mod:`fedmoap.run.matrix`)."""
    from fedmoap.run.matrix import main as matrix

    return matrix(argv)


COMMANDS = (
    Command("fit", "[--config FILE] [--section.key VALUE ...] [--run_dir DIR]", "train or resume a run", fit),
    Command(
        "sweep",
        "--study FILE | --config FILE --grid KEY=A,B ... [--seeds S ...]; --run | --list | --slurm [--out DIR]",
        "run or list a study or a grid of runs, or write it as a SLURM array",
        sweep,
    ),
    Command("report", "RUN_DIR ... | --study FILE", "table of runs: mean ± std over seeds", report),
    Command("eval", EVAL_USAGE, "evaluate a finished run again (other modes or knobs)", evaluate),
    Command("mia", "RUN_DIR [--shadows S] [--target all|largest] ...", "membership inference on a finished run", mia),
    Command("flower", FLOWER_USAGE, "the run on Flower (simulation), or a Flower App to deploy", flower),
    Command("methods", "[NAME ...] [--cells]", "what each method combines with (DP, evaluation, engine)", methods),
)
"""Every subcommand, in the order ``fedmoap --help`` lists them."""

OWN_HELP = {"eval", "flower"}
"""Commands whose ``--help`` is their line of :data:`COMMANDS` (the others have a parser)."""


def overview() -> str:
    """``fedmoap --help``: every command, its arguments and what it does."""
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        "usage: fedmoap COMMAND [ARGS ...]   (fedmoap COMMAND --help for its options)",
        "",
        "Personalized federated prompt learning for CLIP-like models (pFedMoAP and baselines).",
        "",
        "commands:",
    ]
    for c in COMMANDS:
        lines += [f"  {c.name:<{width}}  {c.summary}", f"  {'':<{width}}    fedmoap {c.name} {c.arguments}"]
    lines += ["", "exit codes: 0 done, 2 bad input (one line naming it), 3 preempted, 130 interrupted; rerun to resume"]
    return "\n".join(lines)


def _stopping() -> None:
    """Once the program has answered a Ctrl-C, a second one (or one still pending) must not kill
    the process by SIGINT while it exits, which would lose the exit code and the last flush."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (an embedding caller): nothing to change
        pass


def guarded(command: Command, argv: list[str]) -> int:
    """Run ``command``, mapping what it raises to one line on stderr and the exit code."""
    try:
        return command.run(argv)
    except (Preempted, StoppedAtStartup) as exc:  # Preempted before FedmoapError, its base
        print(f"fedmoap: preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Interrupted as exc:
        print(f"fedmoap: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a command's own report of where it stopped
        print(f"fedmoap {command.name}: interrupted (SIGINT); rerun the same command", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """``fedmoap COMMAND ARGS``: the exit code."""
    program, argv = argv is None, sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0 if argv else 2
    command = next((c for c in COMMANDS if c.name == argv[0]), None)
    if command is None:
        names = ", ".join(c.name for c in COMMANDS)
        print(f"fedmoap: error: no command {argv[0]!r} (commands: {names}; fedmoap --help)", file=sys.stderr)
        return 2
    if command.name in OWN_HELP and argv[1:2] in (["-h"], ["--help"]):
        print(f"usage: fedmoap {command.name} {command.arguments}\n  {command.run.__doc__.split(':', 1)[1].strip()}")
        return 0
    code = guarded(command, argv[1:])
    if program and code == EXIT_INTERRUPTED:
        _stopping()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
