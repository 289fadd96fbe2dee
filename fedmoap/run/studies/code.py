"""Which code made a study's cells, and whether two of them ran different method code.

Every run's ``results.json`` names the fedmoap version and git commit that made it (``code``), and
a study record keeps it per cell. A row whose cells were made by commits that differ in the
method's code compares two implementations as one, so a study's table refuses to mix them unless
told to (``fedmoap report --study FILE --mixed-code``). A method's code is its module and the
modules of ``fedmoap.methods`` it imports, at each commit; the commits are compared with ``git
diff`` in the checkout the package runs from. A cell made before records named their code, or at
a commit this checkout does not have, cannot be compared and is counted as such.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["REPO", "method_files", "commit_of", "code_differs", "mixed_code"]

REPO = Path(__file__).resolve().parents[3]
"""The checkout the package runs from (its git history answers :func:`code_differs`)."""


def method_files(cls: type) -> list[str]:
    """Repository paths of ``cls``'s module and of the ``fedmoap.methods`` modules it imports."""
    source = Path(inspect.getsourcefile(cls) or "")
    files = {source}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedmoap.methods"):
            path = REPO / Path(*node.module.split("."))
            files.add(path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py")
    return sorted(str(f.relative_to(REPO)) for f in files if f.is_file())


def commit_of(entry: dict[str, Any]) -> str | None:
    """The commit a record's cell names (``+dirty`` dropped: the diff is against the commit), or None."""
    commit = (entry.get("code") or {}).get("commit")
    return commit.split("+")[0] if isinstance(commit, str) and commit else None


def code_differs(a: str, b: str, files: list[str]) -> bool | None:
    """Whether ``files`` differ between commits ``a`` and ``b`` (None: git cannot tell, e.g. a
    commit this checkout does not have)."""
    if a == b:
        return False
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "diff", "--quiet", a, b, "--", *files], capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(done.returncode)


def mixed_code(methods: dict[str, type], rows: dict[str, dict[str, list[dict[str, Any]]]]) -> tuple[list[str], int]:
    """The rows whose cells ran different method code (one line each) and the number of cells
    whose code cannot be compared. ``methods``: row label -> its method class; ``rows``: a
    record's label -> split -> cells."""
    problems, unknown = [], 0
    for label, splits in rows.items():
        entries = [e for cells in splits.values() for e in cells]
        commits = [commit_of(e) for e in entries]
        unknown += sum(c is None for c in commits)
        known = sorted({c for c in commits if c})
        if len(known) < 2 or label not in methods:
            continue
        files = method_files(methods[label])
        for other in known[1:]:
            differs = code_differs(known[0], other, files)
            if differs is None:
                unknown += sum(c == other for c in commits)
            elif differs:
                problems.append(
                    f"{label}: cells made at {known[0][:12]} and {other[:12]}, whose code of "
                    f"{', '.join(Path(f).name for f in files)} differs"
                )
    return problems, unknown
