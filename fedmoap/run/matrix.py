"""``fedmoap methods [NAME ...] [--cells]``: every method's declarations and the combinations it
refuses (DP mode x evaluation mode x learning-rate schedule x engine), read from
:mod:`fedmoap.federation.combinations`, the rules the validator applies."""

from __future__ import annotations

import sys
from itertools import product
from typing import TYPE_CHECKING

from fedmoap.errors import FedmoapError

if TYPE_CHECKING:
    from fedmoap.federation.combinations import Cell


__all__ = ["USAGE", "dims", "coordinates", "where", "summary", "cells_table", "main"]

USAGE = (
    "usage: fedmoap methods [NAME ...] [--cells]\n"
    "  each method's declarations and the combinations it refuses (dp.mode x eval.modes x\n"
    "  train.lr_schedule x engine), with why; --cells: every cell, one tab-separated line each"
)


def dims() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The matrix's dimensions: (label, values)."""
    from fedmoap.federation.combinations import DP_MODES, ENGINES, EVAL_MODES, SCHEDULES

    return (("dp", DP_MODES), ("eval", EVAL_MODES), ("schedule", SCHEDULES), ("engine", ENGINES))


def coordinates(cell: Cell) -> tuple[str, str, str, str]:
    """(dp mode, evaluation mode, schedule, engine) of a matrix cell."""
    return cell.dp, cell.modes[-1], cell.schedule, cell.engine


def where(cells: set[tuple[str, ...]]) -> str:
    """The cells as a product of values per dimension ("dp record_sgd x eval unseen_clients"),
    or listed where they are not a product."""
    dimensions = dims()
    values = [sorted({c[i] for c in cells}, key=list(dim).index) for i, (_, dim) in enumerate(dimensions)]
    if set(product(*values)) != cells:
        return "; ".join(" ".join(c) for c in sorted(cells))
    parts = [f"{label} {'|'.join(v)}" for (label, dim), v in zip(dimensions, values) if len(v) < len(dim)]
    return " x ".join(parts) or "every cell"


def summary(names: list[str]) -> str:
    """The refusals every listed method shares, once; then per method its declarations and its
    own refusals with the cells each covers."""
    from fedmoap.federation.combinations import cells as cells_of_matrix
    from fedmoap.federation.combinations import matrix
    from fedmoap.methods import registry

    methods = registry()
    refused: dict[str, dict[str, set[tuple[str, ...]]]] = {}
    supported: dict[str, int] = {}
    for name in names:
        cells = matrix({name: methods[name]})
        supported[name] = sum(1 for *_, r in cells if not r)
        by_reason = refused.setdefault(name, {})
        for _, cell, reasons in cells:
            for reason in reasons:
                by_reason.setdefault(reason, set()).add(coordinates(cell))
    common = {r: c for r, c in refused[names[0]].items() if all(refused[n].get(r) == c for n in names)}
    total = len(list(cells_of_matrix()))
    lines = [f"{len(names)} methods x {total} cells ({' x '.join(f'{len(d)} {label}' for label, d in dims())})"]
    if common and len(names) > 1:
        lines.append("every method:")
        lines += [f"  refused where {where(c)}: {reason}" for reason, c in common.items()]
    for name in names:
        d = methods[name]().declared()
        lines.append(
            f"{name}: supported in {supported[name]} of {total} cells; record loss reads {d.record_loss}; "
            f"keeps records: {d.keeps_records or 'no'}; server reads {d.server_reads} of the uploads; "
            f"newcomer uploads: {'yes' if d.newcomer_uploads else 'no'}"
            + (f"; its upload reveals {d.reveals}" if d.reveals else "")
            + (f"; round knobs: {', '.join(d.round_knobs)}" if d.round_knobs else "")
            + (f"; client knobs: {', '.join(d.client_knobs)}" if d.client_knobs else "")
        )
        own = [(r, c) for r, c in refused[name].items() if r not in common or len(names) == 1]
        lines += [f"  refused where {where(c)}: {reason}" for reason, c in own]
    return "\n".join(lines)


def cells_table(names: list[str]) -> str:
    """Every cell: method, dp mode, evaluation mode, schedule, engine, supported|refused, why."""
    from fedmoap.federation.combinations import matrix
    from fedmoap.methods import registry

    methods = registry()
    rows = ["method\tdp\teval\tschedule\tengine\tstatus\twhy"]
    for name, cell, reasons in matrix({n: methods[n] for n in names}):
        status = "refused" if reasons else "supported"
        rows.append("\t".join((name, *coordinates(cell), status, " | ".join(reasons))))
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    """The ``fedmoap methods`` command."""
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    from fedmoap.methods import registry

    names = [a for a in argv if a != "--cells"]
    try:
        unknown = [n for n in names if n.startswith("-") or n not in registry()]
        if unknown:
            raise FedmoapError(f"methods: no method or option {unknown[0]!r} (methods: {', '.join(registry())})")
        names = names or list(registry())
        print(cells_table(names) if "--cells" in argv else summary(names))
    except FedmoapError as exc:
        print(f"fedmoap: error: {exc}", file=sys.stderr)
        return 2
    return 0
