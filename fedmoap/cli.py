"""Command line: ``fedmoap fit --config run.yaml [--section.key value ...] [--run_dir DIR]``."""
from __future__ import annotations

import dataclasses
import os
import sys
from datetime import datetime
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from fedmoap.config import RunConfig
from fedmoap.errors import FedmoapError


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
    for p in (parser, fit):
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
    os.environ.setdefault("HF_HUB_OFFLINE", os.environ.get("FEDMOAP_OFFLINE", "0") == "1" and "1" or
                          os.environ.get("HF_HUB_OFFLINE", "0"))
    if not argv:
        build_parser().print_help()
        return 2
    try:
        cfg, run_dir, progress = parse_fit(argv)
        run_dir = run_dir or str(Path("runs") / f"{cfg.method}-{datetime.now():%Y%m%d-%H%M%S}")
        from fedmoap.fit import fit  # heavy imports only once the arguments are known to be valid
        out = fit(cfg, run_dir, progress)
    except FedmoapError as exc:
        print(f"fedmoap: error: {exc}", file=sys.stderr)
        return 2
    rounds = out["rounds"]
    if rounds:
        last = rounds[-1]
        print(f"{cfg.method}: round {last['round']}: mean acc {last['mean_acc']:.4f} "
              f"(std {last['std_acc']:.4f}) -> {run_dir}/results.json  [set-up {out['setup_seconds']:.0f} s, "
              f"{out['features_computed']} images encoded; rounds {out['round_seconds']:.0f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
