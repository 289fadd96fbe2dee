"""Print the RSS after each round of `fedmoap fit`, before and after gc.collect() + malloc_trim(0)
(glibc): tells live memory from freed memory the allocator keeps.

    python scripts/diagnostics/rss_per_round.py fit [fedmoap fit arguments]
"""

import ctypes
import gc
import sys

import fedmoap.federation.rounds as R
from fedmoap.run.cli import main

libc = ctypes.CDLL("libc.so.6")


def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) // 1024


orig = R.Federation.run_round


def wrapped(self, t, *a, **k):
    out = orig(self, t, *a, **k)
    before = rss()
    gc.collect()
    libc.malloc_trim(0)
    print(f"round {t}: rss {before} MB, after gc+trim {rss()} MB", flush=True)
    return out


R.Federation.run_round = wrapped
main(sys.argv[1:])
