"""Run ``fedmoap`` in this process, then print its peak resident set size.

    python benchmarks/peak_rss.py fit --config ...

A child's ``ru_maxrss`` from ``wait4`` also counts the pages of the parent it was forked from, so
the benchmark asks the child itself: ``VmHWM`` of /proc/self/status belongs to the memory of the
program after exec alone (Linux).
"""
from __future__ import annotations

import sys

from fedmoap.cli import main


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    rc = main(sys.argv[1:])
    print(f"PEAK_RSS_KB {peak_rss_kb()}", flush=True)
    sys.exit(rc)
