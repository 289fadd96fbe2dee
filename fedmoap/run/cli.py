"""Command line: ``fedmoap fit --config run.yaml [--section.key value ...] [--run_dir DIR]``;
``fedmoap eval RUN_DIR [--section.key value ...] [--out FILE]`` (:mod:`fedmoap.run.reevaluate`);
``fedmoap mia RUN_DIR [--shadows S] [--target all|largest] ...`` (:mod:`fedmoap.run.mia`);
``fedmoap flower --config run.yaml ... --run_dir DIR`` (:mod:`fedmoap.run.flower`, Flower's simulation);
``fedmoap sweep ...``; ``fedmoap report ...``; ``fedmoap methods [NAME ...] [--cells]``
(:mod:`fedmoap.run.matrix`: what each method combines with).

Exit codes: 0 done; 2 bad input or a failed write (one line on stderr naming the culprit);
3 preempted by SIGUSR1/SIGTERM; 130 interrupted by Ctrl-C (SIGINT). After 2 (once fixed), 3 and
130, rerunning the same command resumes from the last checkpoint."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ArgumentError

from fedmoap.errors import FedmoapError
from fedmoap.run.parse import (  # noqa: F401  (public here: fedmoap.run.cli.parse_fit and friends)
    build_parser,
    method_class_problem,
    parse_fit,
    parser_message,
    short_method_names,
)
from fedmoap.preemption import (
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    Interrupted,
    Preempted,
    StoppedAtStartup,
    stop_flag,
)

if TYPE_CHECKING:
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        build_parser().print_help()
        return 2
    if argv[0] == "sweep":
        return _sweep(argv)
    if argv[0] == "report":
        return _report(argv)
    if argv[0] == "eval":
        return _eval(argv[1:])
    if argv[0] == "mia":
        return _mia(argv[1:])
    if argv[0] == "flower":
        return _flower(argv[1:])
    if argv[0] == "methods":
        from fedmoap.run.matrix import main as methods

        return methods(argv[1:])
    flag = stop_flag()  # before the heavy imports: a preemption signal during start-up counts
    try:
        with flag.at_once():  # parsing and importing write nothing: a signal stops them at once
            cfg, run_dir, progress = parse_fit(argv)
            name = cfg.method.name or type(cfg.method).__name__
            run_dir = run_dir or str(Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}")
            from fedmoap.run.fit import fit  # heavy imports only once the arguments are known to be valid

        out = fit(cfg, run_dir, progress)
    except (Preempted, StoppedAtStartup) as exc:
        print(f"fedmoap: preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Interrupted as exc:
        print(f"fedmoap: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FedmoapError as exc:
        print(f"fedmoap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside fit()'s own report of where it stopped
        print("fedmoap: interrupted (SIGINT); rerun the same command", file=sys.stderr)
        return EXIT_INTERRUPTED
    rounds = out["rounds"]
    if rounds and out["rank"] == 0:
        last = rounds[-1]
        print(
            f"{name}: round {last['round']}: mean acc {last['mean_acc']:.4f} "
            f"(std {last['std_acc']:.4f}) -> {run_dir}/results.json  [set-up {out['setup_seconds']:.0f} s, "
            f"{out['features_computed']} images encoded; rounds {out['round_seconds']:.1f} s]"
        )
    return 0


def _eval(argv: list[str]) -> int:
    """``fedmoap eval RUN_DIR [overrides] [--out FILE]``."""
    if not argv or argv[0].startswith("-"):
        print(
            "usage: fedmoap eval RUN_DIR [--eval.modes [local,global] --method.KNOB V ...] [--out FILE]\n"
            "  evaluates a finished run again (fedmoap/run/reevaluate.py); writes RUN_DIR/eval/<digest>.json",
            file=sys.stderr,
        )
        return 2
    run_dir, rest, out = argv[0], list(argv[1:]), None
    if "--out" in rest:
        i = rest.index("--out")
        if i + 1 >= len(rest):
            print("fedmoap: error: --out needs a file name", file=sys.stderr)
            return 2
        out = rest[i + 1]
        del rest[i : i + 2]
    try:
        from fedmoap.run.reevaluate import reevaluate

        result, path = reevaluate(run_dir, rest, out)
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    last = result["rounds"][-1]
    print(
        f"{result['method']}: round {last['round']} re-evaluated: mean acc {last['mean_acc']:.4f} "
        f"(std {last['std_acc']:.4f}) -> {path}"
    )
    return 0


def _mia(argv: list[str]) -> int:
    """``fedmoap mia RUN_DIR [--shadows S] [--target all|largest] [--out DIR] ...``."""
    from fedmoap.run.mia.args import parse_mia

    try:
        run_dir, args = parse_mia(argv)
        from fedmoap.run.mia.run import run_mia, table

        result, path = run_mia(run_dir, args)
    except Preempted as exc:  # before FedmoapError, its base: exit 3, rerun to resume the shadows
        print(f"fedmoap: preempted: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except Interrupted as exc:
        print(f"fedmoap: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    target = result["target"]
    print(
        f"{result['method']}: membership inference on clients {target['clients']} "
        f"({target['samples']} samples, half members), {len(result['shadows'])} shadow federations"
    )
    print(table(result))
    print(f"-> {path}")
    return 0


def _flower(argv: list[str]) -> int:
    """``fedmoap flower --config FILE [overrides] --run_dir DIR [--app DIR] [--write_only] ...``
    (:mod:`fedmoap.run.flower.run`)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: fedmoap flower --config FILE [--section.key value ...] --run_dir DIR [--app APP_DIR] "
            "[--write_only] [--num_cpus N] [--client_cpus C] [--client_gpus G]\n"
            "  runs the config in Flower's Simulation Engine, one SuperNode per client (fedmoap/flower/run.py)",
            file=sys.stderr,
        )
        return 2
    try:
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
            path = write_app(
                Path(opts["app"]),
                fit_args,
                cfg.data.num_clients,
                opts.get("client_cpus", 1.0),
                opts.get("client_gpus", 0.0),
            )
            print(f"Flower App -> {path}; run it with: FLWR_HOME={path.parent / 'flwr-home'} flwr run {path.parent}")
        elif opts.get("write_only"):
            raise FedmoapError("--write_only needs --app APP_DIR")
        if opts.get("write_only"):
            return 0
        simulate(fit_args, opts.get("num_cpus"), opts.get("client_cpus", 1.0), opts.get("client_gpus", 0.0))
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    from fedmoap.run.report import read_results

    last = read_results(run_dir)["rounds"][-1]
    print(
        f"{cfg.method.name or type(cfg.method).__name__} on Flower: round {last['round']}: mean acc "
        f"{last['mean_acc']:.4f} (std {last['std_acc']:.4f}) -> {run_dir}/results.json"
    )
    return 0


def _sweep(argv: list[str]) -> int:
    from fedmoap.run import sweep

    try:
        ns = build_parser().parse_args(argv).sweep
        if ns.study:
            sweep.study_command(ns.study, ns.run, ns.slurm, ns.list, ns.out, ns.only, ns.set)
            return 0
        out = ns.out or "sweep.txt"
        n = sweep.write_sweep(out, ns.config, ns.grid, ns.seeds, ns.runs_root)
    except Preempted as exc:  # before FedmoapError, its base: exit 3, rerun to resume
        print(f"fedmoap: preempted: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_PREEMPTED
    except Interrupted as exc:
        print(f"fedmoap: {exc}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"{n} runs -> {out}; submit: sbatch --array=0-{n - 1} slurm/array.sbatch {out}")
    return 0


def _report(argv: list[str]) -> int:
    from fedmoap.run import report

    try:
        ns = build_parser().parse_args(argv).report
        if ns.study:
            from fedmoap.run.study import load_study
            from fedmoap.run.study_table import study_report

            print(study_report(load_study(ns.study), ns.out, ns.recorded))
            return 0
        if not ns.runs:
            raise FedmoapError("report: give run directories or --study FILE")
        warnings: list[str] = []
        runs = report.load_runs(ns.runs, warn=warnings.append)
        groups = report.summarize(runs, ns.group_by)
        warnings += [f"two runs with the same seed in {d}" for d in report.duplicate_seeds(groups)]
        table = report.render(groups, ns.format, ns.layout, ns.metric)
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for message in warnings:
        print(f"fedmoap: warning: {message}", file=sys.stderr)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
