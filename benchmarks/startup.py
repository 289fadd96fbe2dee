"""Start-up: what ``fedmoap --help``, ``fedmoap report --help`` and ``fedmoap fit --help`` import,
measured with ``python -X importtime`` in fresh processes of this interpreter.

    python benchmarks/startup.py [--json OUT.json]

For each command: the modules imported, whether torch is among them, the sum of the modules' own
import times, and the process's CPU time; the ratio of ``fedmoap --help``'s import time to
``fedmoap fit --help``'s (target: ``--help`` and ``report --help`` import no torch).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["report", "--help"], ["sweep", "--help"], ["fit", "--help"])
RUN = "import sys\nfrom fedmoap.run.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
LINE = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|( *)(\S+)")


def measure(argv: list[str]) -> dict:
    """One fresh process running ``fedmoap ARGV`` under ``-X importtime``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", RUN, *argv], capture_output=True, text=True, timeout=600
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    modules = [(int(m.group(1)), m.group(3)) for m in map(LINE.match, proc.stderr.splitlines()) if m]
    return {
        "command": "fedmoap " + " ".join(argv),
        "modules": len(modules),
        "torch": any(name == "torch" for _, name in modules),
        "import_self_s": round(sum(us for us, _ in modules) / 1e6, 3),
        "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 3),
        "wall_s": round(wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    rows = [measure(argv) for argv in COMMANDS]
    by = {r["command"]: r for r in rows}
    out = {
        "python": sys.version.split()[0],
        "rows": rows,
        "ratio_help_vs_fit_help_import": round(
            by["fedmoap --help"]["import_self_s"] / by["fedmoap fit --help"]["import_self_s"], 4
        ),
    }
    for r in rows:
        print(
            f"{r['command']:<24} {r['modules']:>5} modules  torch: {'yes' if r['torch'] else 'no ':<3}  "
            f"imports {r['import_self_s']:6.2f} s  cpu {r['cpu_s']:6.2f} s  wall {r['wall_s']:6.2f} s"
        )
    print(f"ratio --help / fit --help (import time): {out['ratio_help_vs_fit_help_import']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
