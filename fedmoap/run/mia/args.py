"""The settings of ``fedmoap mia`` and its command-line parser (``--help`` is made from the
attribute docstrings below)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, Optional

from jsonargparse import ArgumentError, ArgumentParser, set_parsing_settings

from fedmoap.errors import FedmoapError

__all__ = ["MiaArgs", "problems", "mia_parser", "parse_mia"]


@dataclass
class MiaArgs:
    """Settings of the membership-inference attack."""

    shadows: int = 8
    """Shadow federations S, each a full ``fedmoap fit`` run of the target's config and method on
    its own shadow split (DP-FPL: 50). Finished shadows are reused; more shadows add runs."""
    target: Literal["all", "largest"] = "all"
    """Whose evaluation model is attacked: ``all`` clients (their samples pooled per class) or
    the ``largest`` (most training samples; DP-FPL's choice)."""
    epochs: int = 200
    """Epochs of each per-class attack MLP (DP-FPL: 200); the epoch with the lowest summed
    training loss is kept."""
    batch_size: int = 32
    """Batch size of the attack MLPs. DP-FPL trains with batch 1 (``--batch_size 1`` for the
    reference; slow on a CPU for many shadows)."""
    lr: float = 0.01
    """Adam learning rate of the attack MLPs (DP-FPL: 0.01)."""
    out: Optional[str] = None
    """Output directory: the shadow runs (``shadow-<i>/``, their splits ``shadow-<i>.split.json``)
    and the result ``mia.json``. Default ``RUN_DIR/mia``."""
    progress: bool = True
    """Show progress bars of the shadow runs."""


def problems(args: MiaArgs) -> list[str]:
    """What is wrong with ``args`` (each naming its option)."""
    out = []
    for f in fields(args):  # every float option: inf and nan are not settings (json writes them as Infinity, NaN)
        value = getattr(args, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"--{f.name}: {value} is not a finite number")
    for name in ("shadows", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            out.append(f"--{name}: {getattr(args, name)} is below 1")
    if math.isfinite(args.lr) and not args.lr > 0:
        out.append(f"--lr: {args.lr} is not positive")
    return out


def mia_parser() -> ArgumentParser:
    """``fedmoap mia RUN_DIR [--shadows S] [--target all|largest] ...``."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    from fedmoap.run import mia

    parser = ArgumentParser(
        prog="fedmoap mia",
        description=mia.__doc__.split("\n\n")[0].replace("``", "").replace("\n", " "),
        exit_on_error=False,
    )
    parser.add_argument("run_dir", type=str, help="a finished run directory (fedmoap fit's --run_dir)")
    parser.add_class_arguments(MiaArgs)
    return parser


def parse_mia(argv: list[str]) -> tuple[str, MiaArgs]:
    """(run directory, settings) from ``fedmoap mia`` arguments; bad ones raise
    :class:`FedmoapError` naming them."""
    parser = mia_parser()
    try:
        ns = parser.parse_args(argv)
    except ArgumentError as exc:
        raise FedmoapError(f"mia: {' '.join(str(exc).split())} (see `fedmoap mia --help`)") from None
    args = MiaArgs(**{f.name: ns[f.name] for f in fields(MiaArgs)})
    bad = problems(args)
    if bad:
        raise FedmoapError("; ".join(bad))
    return ns.run_dir, args
