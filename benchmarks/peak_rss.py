"""Run ``fedmoap fit`` in this process, then write its peak resident set size and timings as JSON.

    python benchmarks/peak_rss.py RECORD.json fit --config ...

``RECORD.json`` gets ``{"peak_rss_kb", "setup_seconds", "round_seconds", "each_round_seconds"}``
(the first seconds are what ``fit`` returns, the last each round's own, evaluation included:
results.json holds accuracies, not timings). A child's ``ru_maxrss`` from
``wait4`` also counts the pages of the parent it was forked from, so the benchmark asks the child
itself: ``VmHWM`` of /proc/self/status belongs to the memory of the program after exec alone
(Linux).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fedmoap.federation.rounds import Federation
from fedmoap.run.fit import fit
from fedmoap.run.parse import parse_fit


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def timed_rounds() -> list[float]:
    """Make every :meth:`Federation.run_round` of this process append its seconds to the list
    returned."""
    seconds: list[float] = []
    run_round = Federation.run_round

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return run_round(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    Federation.run_round = timed
    return seconds


if __name__ == "__main__":
    record, argv = Path(sys.argv[1]), sys.argv[2:]
    cfg, run_dir, progress = parse_fit(argv)
    each_round = timed_rounds()
    out = fit(cfg, run_dir, progress)
    if out["rank"] == 0:  # with fabric.devices > 1 every process runs this file
        record.write_text(
            json.dumps(
                {
                    "peak_rss_kb": peak_rss_kb(),
                    "setup_seconds": out["setup_seconds"],
                    "round_seconds": out["round_seconds"],
                    "each_round_seconds": each_round,
                }
            )
        )
