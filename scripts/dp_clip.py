"""The clip norm S of the DP study (``configs/studies/dp.yaml``), measured without the private
data: the median norm of the change of a non-private PromptFL upload over the first 3 rounds on
the public proxy (the synthetic colour-square dataset with the same towers and settings, seed 0).

    python scripts/dp_clip.py [--out runs/dp-clip] [-- extra fit overrides, e.g. --fabric.threads 1]

Prints S; the study's ``dp.clip`` holds the value measured with its settings. Not a study cell:
the run only switches on the DP diagnostics (clip 1000 and z 1e-12: noise std 1e-9, nothing
clipped) and what is wanted is one number from its per-round records.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fedmoap.run import runs
from fedmoap.run.fit import fit
from fedmoap.run.parse import parse_fit

PROXY = ["--data.source", "synthetic"]


def calibrate(out: Path, overrides: list[str]) -> float:
    """Median ``dp_median_norm`` of a 3-round diagnostic PromptFL run on the proxy in ``out``."""
    cfg, _, _ = parse_fit(
        [
            "fit",
            *overrides,
            "--method",
            "promptfl",
            *PROXY,
            "--dp.mode",
            "client_upload",
            "--dp.clip",
            "1000",
            "--dp.noise_multiplier",
            "1e-12",
            "--fed.rounds",
            "3",
        ]
    )
    fit(cfg, out, progress=False)
    return statistics.median(r["dp_median_norm"] for r in runs.read_run(out).results["rounds"])


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/dp-clip"), help="the proxy run's directory")
    ap.add_argument("overrides", nargs="*", help="extra `fedmoap fit` arguments, after --")
    a = ap.parse_args(argv)
    clip = calibrate(a.out, a.overrides)
    print(f"clip norm S = {clip:.4g} (exact: {clip!r})")
    return clip


if __name__ == "__main__":
    main()
