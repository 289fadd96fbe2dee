"""Command line: ``fedmoap fit --config run.yaml [--section.key value ...] [--run_dir DIR]``."""
from __future__ import annotations

import dataclasses
import sys
from datetime import datetime
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from fedmoap.config import RunConfig
from fedmoap.errors import FedmoapError
from fedmoap.preemption import EXIT_PREEMPTED, Preempted, stop_flag


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fedmoap", description="Personalized federated prompt learning "
                            "for CLIP-like models (pFedMoAP and baselines).")
    commands = parser.add_subcommands(dest="command")
    fit = ArgumentParser(description="Train (or resume) a federated run. With no --config: the "
                         "offline default (packaged towers, Fashion-MNIST, pFedMoAP).")
    fit.add_argument("--config", action=ActionConfigFile, help="YAML file of settings")
    fit.add_class_arguments(RunConfig)
    fit.add_argument("--run_dir", type=str | None, default=None,
                     help="Output directory; re-running on it resumes. Default: runs/<method>-<time>")
    fit.add_argument("--progress", type=bool, default=True, help="Show progress bars")
    commands.add_subcommand("fit", fit, help="train or resume a run")
    sweep = ArgumentParser(description="Write a sweep file (one `fedmoap fit` argument line per "
                           "grid point and seed) for slurm/array.sbatch.")
    sweep.add_argument("--config", type=str | None, default=None, help="base config of every run")
    sweep.add_argument("--grid", type=str, nargs="+", default=[],
                       help="overrides to cross, e.g. method=promptfl,pfedmoap pfedmoap.lam=0,0.5")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sweep.add_argument("--runs_root", type=str, default="runs/sweep", help="run directories go here")
    sweep.add_argument("--out", type=str, default="sweep.txt", help="the sweep file")
    commands.add_subcommand("sweep", sweep, help="write a sweep file for a SLURM array")
    for p in (parser, fit, sweep):
        p.exit_on_error = False  # one-line errors from main() instead of the full usage text
    return parser


def parse_fit(argv: list[str]) -> tuple[RunConfig, str | None, bool]:
    """Parse ``fedmoap fit ...`` arguments into a :class:`RunConfig`; a bad key, value or config
    file raises :class:`FedmoapError` with the parser's message."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except ArgumentError as exc:
        message = " ".join(str(exc).split())
        raise FedmoapError(f"{message} (see `fedmoap fit --help`)") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(ns).fit
    cfg = RunConfig(**{f.name: init[f.name] for f in dataclasses.fields(RunConfig)})
    return cfg, init["run_dir"], init["progress"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        build_parser().print_help()
        return 2
    if argv[0] == "sweep":
        return _sweep(argv)
    stop_flag()  # before the heavy imports: a preemption signal during start-up counts
    try:
        cfg, run_dir, progress = parse_fit(argv)
        run_dir = run_dir or str(Path("runs") / f"{cfg.method}-{datetime.now():%Y%m%d-%H%M%S}")
        from fedmoap.fit import fit  # heavy imports only once the arguments are known to be valid
        out = fit(cfg, run_dir, progress)
    except Preempted as exc:
        print(f"fedmoap: preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except FedmoapError as exc:
        print(f"fedmoap: error: {exc}", file=sys.stderr)
        return 2
    rounds = out["rounds"]
    if rounds and out["rank"] == 0:
        last = rounds[-1]
        print(f"{cfg.method}: round {last['round']}: mean acc {last['mean_acc']:.4f} "
              f"(std {last['std_acc']:.4f}) -> {run_dir}/results.json  [set-up {out['setup_seconds']:.0f} s, "
              f"{out['features_computed']} images encoded; rounds {out['round_seconds']:.1f} s]")
    return 0


def _sweep(argv: list[str]) -> int:
    from fedmoap.sweep import write_sweep
    try:
        ns = build_parser().parse_args(argv).sweep
        n = write_sweep(ns.out, ns.config, ns.grid, ns.seeds, ns.runs_root)
    except (ArgumentError, FedmoapError) as exc:
        print(f"fedmoap: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"{n} runs -> {ns.out}; submit: sbatch --array=0-{n - 1} slurm/array.sbatch {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
