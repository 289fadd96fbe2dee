"""Print the RSS after each round of `fedmoap fit`, before and after gc.collect() + malloc_trim(0)
(glibc): tells live memory from freed memory the allocator keeps.

    python scripts/diagnostics/rss_per_round.py fit [fedmoap fit arguments]
"""

import ctypes
import gc
import sys

import fedmoap.federation.rounds as R
from fedmoap.run.cli import main as cli_main


def rss() -> int:
    """This process's resident set size in MB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main(argv: list[str]) -> int:
    """``fedmoap ARGV`` with a line of RSS after each round; the round is unpatched afterwards."""
    libc = ctypes.CDLL("libc.so.6")
    orig = R.Federation.run_round

    def wrapped(self, t, *a, **k):
        out = orig(self, t, *a, **k)
        before = rss()
        gc.collect()
        libc.malloc_trim(0)
        print(f"round {t}: rss {before} MB, after gc+trim {rss()} MB", flush=True)
        return out

    R.Federation.run_round = wrapped
    try:
        return cli_main(argv)
    finally:
        R.Federation.run_round = orig


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
