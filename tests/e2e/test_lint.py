"""The code passes ruff's lint rules and is ruff-formatted, as configured in pyproject.toml (CI runs
this), and its imports keep the layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_check_passes():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "fedmoap", "tests", "scripts", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_code_is_ruff_formatted():
    """``ruff format --check``: the whole tree (package, tests, scripts, benchmarks, notebooks)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_layers_have_no_upward_import():
    """import-linter's layers contract in pyproject.toml: no module imports a higher layer, so
    there are no cycles (TYPE_CHECKING imports count too)."""
    import shutil

    exe = shutil.which("lint-imports")
    assert exe, "import-linter is in the test extra"
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_a_cycle_between_two_sibling_modules_breaks_the_contracts(tmp_path):
    """The contracts can fail: a copy of the package where ``methods.gating`` imports
    ``methods.pfedmoap`` (which imports it), a cycle between siblings that no layer lists."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(REPO / "fedmoap", copy / "fedmoap", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    gating = copy / "fedmoap" / "methods" / "gating.py"
    gating.write_text(gating.read_text() + "\nfrom fedmoap.methods import pfedmoap  # noqa: E402,F401\n")
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(copy), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [shutil.which("lint-imports"), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode != 0 and "No cycle between sibling modules" in proc.stdout, proc.stdout[-3000:]
    assert "BROKEN" in proc.stdout and ".pfedmoap -> .gating" in proc.stdout


def test_every_module_says_what_it_exports():
    """Each module of the package lists its public names in ``__all__`` (ruff's F822 checks that
    each listed name exists), so a reader and ``from x import *`` see the same surface."""
    import ast

    missing = []
    for path in sorted((REPO / "fedmoap").rglob("*.py")):
        if path.name == "__main__.py" or "model_configs" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        names = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        if "__all__" not in names:
            missing.append(str(path.relative_to(REPO)))
        else:
            exported = next(
                ast.literal_eval(n.value)
                for n in tree.body
                if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
            )
            defined = {
                n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
            hidden = sorted(d for d in defined if not d.startswith("_") and d not in exported)
            if hidden:
                missing.append(f"{path.relative_to(REPO)} (public but not in __all__: {', '.join(hidden)})")
    assert missing == []
