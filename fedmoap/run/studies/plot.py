"""A study's figure (``fedmoap report --study FILE --plot OUT.png``): each row's mean per-client
accuracy per round, its spread over seeds shaded (± one sample standard deviation), one panel
per split of the table, drawn from the study's record (its cells' ``curve``)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from fedmoap.errors import FedmoapError

__all__ = ["FORMATS", "check_plot_path", "curves", "plot_record"]

FORMATS = (".png", ".svg", ".pdf")
"""The figure formats (by the file's suffix)."""


def check_plot_path(path: str | Path) -> Path:
    """The figure's path, refused in one line if its format is not one of :data:`FORMATS`."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise FedmoapError(f"--plot {path}: not a figure file ({', '.join(FORMATS)})")
    return path


def curves(record: dict[str, Any], split: str) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Row label -> (rounds, mean accuracy in %, sample std in %) over the seeds of ``split``
    whose cells hold a curve, at the rounds every such seed evaluated."""
    out = {}
    for label, splits in record["rows"].items():
        cells = [c for c in splits.get(split, []) if c.get("curve")]
        if not cells:
            continue
        per_seed = [{int(r): float(a) for r, a in c["curve"] if a is not None} for c in cells]
        rounds = sorted(set.intersection(*(set(p) for p in per_seed)))
        means = [100 * statistics.mean(p[r] for p in per_seed) for r in rounds]
        stds = [100 * statistics.stdev(p[r] for p in per_seed) if len(per_seed) > 1 else 0.0 for r in rounds]
        out[label] = (rounds, means, stds)
    return out


def plot_record(record: dict[str, Any], path: str | Path) -> Path:
    """Draw ``record``'s rows per round (one panel per table split) to ``path``; refuses a record
    with no per-round accuracies (one made before records kept them)."""
    path = check_plot_path(path)
    splits = record.get("splits") or []
    panels = {s: curves(record, s) for s in splits}
    if not any(panels.values()):
        raise FedmoapError(
            f"--plot: no cell of study {record.get('study')}'s record holds its per-round accuracies "
            "(records made before they kept them); rerun its cells to draw it"
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FedmoapError('--plot needs matplotlib (pip install "fedmoap[notebooks]")') from None
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits):
        for label, (rounds, means, stds) in panels[split].items():
            (line,) = ax.plot(rounds, means, marker="o", markersize=3, label=label)
            lo = [m - s for m, s in zip(means, stds)]
            hi = [m + s for m, s in zip(means, stds)]
            if any(not math.isclose(s, 0.0) for s in stds):
                ax.fill_between(rounds, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(split)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean per-client accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{record.get('study')}: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
