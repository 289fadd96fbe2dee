"""The study tables of README.md and docs/, made from the study records in ``evidence/``.

A table in a page is written between two markers naming its record::

    <!-- table: evidence/offline_default.json -->
    | variant | final round (%) | last 5 rounds (%) |
    ...
    <!-- end table -->

``--write`` replaces every such table (and ``evidence/<study>.md``) with the one
:func:`~fedmoap.run.studies.table.record_table` makes from the record and its study file;
``--check`` (the test suite runs it) exits 1 naming every table that differs. Outside the tables,
a percentage written with two decimals (before ``%`` or around ``±``) in these pages must be one
of the records' numbers (a cell's mean or spread, or one seed's value), so that prose cannot
drift from the records either.

    python scripts/docs_tables.py --write
    python scripts/docs_tables.py --check
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
"""Pages whose study tables are generated and whose prose numbers are checked."""
PROSE_EXEMPT = {"docs/speed.md", "docs/flower.md"}
"""Pages whose numbers come from the benchmarks' JSON (benchmarks/results/), not from studies."""
BLOCK = re.compile(
    r"(<!-- table: (?P<record>\S+) -->\n)(?P<table>(?:(?!<!-- (?:end )?table).)*?)(\n?<!-- end table -->)", re.S
)
"""A generated table: its start marker, what is there now (maybe nothing) and its end marker."""
TWO_DECIMALS = re.compile(r"(?<![\w.])(\d{1,3}\.\d\d)(?![\d.])")
PERCENT = re.compile(r"(?:±\s*)(\d{1,3}\.\d\d)(?![\d.])|(?<![\w.])(\d{1,3}\.\d\d)(?=\s*(?:%|±))")
"""A percentage in prose: two decimals followed by ``%`` or ``±``, or following ``±``."""


def record_table(record: str) -> str:
    from fedmoap.run.studies.format import load_study
    from fedmoap.run.studies.table import record_table as make

    study = json.loads((ROOT / record).read_text())["file"]
    return make(load_study(ROOT / study), ROOT / record)


def record_page(record: Path) -> str:
    """``evidence/<study>.md``: the study's name, description and table."""
    data = json.loads(record.read_text())
    return f"# {data['study']}\n\n{data['description']}\n\n{record_table(str(record.relative_to(ROOT)))}\n"


def record_numbers() -> set[str]:
    """Every number the records hold, as a page would print it (percent, two decimals)."""
    numbers: set[str] = set()
    for record in sorted((ROOT / "evidence").glob("*.json")):
        numbers |= set(TWO_DECIMALS.findall(record_page(record)))
        data = json.loads(record.read_text())
        for splits in data["rows"].values():
            for cells in splits.values():
                for cell in cells:
                    numbers |= {
                        f"{100 * v:.2f}"
                        for k, v in cell.items()
                        if isinstance(v, float) and k not in ("seconds", "config_digest")
                    }
    return numbers


def prose(text: str) -> str:
    """A page without its generated tables and its code blocks."""
    text = BLOCK.sub("", text)
    return re.sub(r"```.*?```", "", text, flags=re.S)


def page(name: str, text: str, known: set[str]) -> tuple[str, list[str]]:
    """A page with its generated tables made afresh, and its problems: a table that differs from
    its record's, a two-decimal number in the prose that no record holds."""
    problems: list[str] = []

    def table(match: re.Match) -> str:
        fresh = record_table(match["record"])
        if match["table"] != fresh:
            problems.append(f"{name}: the table of {match['record']} is not the record's (run --write)")
        return match.group(1) + fresh + "\n<!-- end table -->"

    new = BLOCK.sub(table, text)
    if name not in PROSE_EXEMPT:
        found = [a or b for a, b in PERCENT.findall(prose(new))]
        problems += [f"{name}: {n} is in no study record" for n in found if n not in known]
    return new, problems


def run(write: bool) -> list[str]:
    """Rewrite (``write``) or compare every generated table; returns the problems found (after
    ``write``: the numbers in prose that no record holds)."""
    problems: list[str] = []
    known = record_numbers()
    for record in sorted((ROOT / "evidence").glob("*.json")):
        path, want = record.with_suffix(".md"), record_page(record)
        if write:
            path.write_text(want)
        elif not path.is_file() or path.read_text() != want:
            problems.append(f"{path.relative_to(ROOT)} is not its record's table (run --write)")
    for name in PAGES:
        text = (ROOT / name).read_text()
        new, found = page(name, text, known)
        if write and new != text:
            (ROOT / name).write_text(new)
        problems += [p for p in found if not (write and "(run --write)" in p)]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate the tables")
    group.add_argument("--check", action="store_true", help="exit 1 if a table or a number differs from its record")
    args = parser.parse_args()
    problems = run(args.write)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
