"""Tests of fedmoap on Flower; ``SMOKE``: the smoke config's arguments every Flower test starts from."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SMOKE = [
    "--config",
    str(REPO / "configs" / "smoke.yaml"),
    "--fed.rounds",
    "2",
    "--fabric.threads",
    "1",
    "--progress",
    "false",
]
