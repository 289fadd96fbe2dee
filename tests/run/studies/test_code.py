"""Which code made a study's cells (fedmoap/run/studies/code.py): a method's files, and cells made
by commits whose method code differs, against this checkout's git history."""

from __future__ import annotations

import subprocess

import pytest

from fedmoap.methods.pfedmoap import PFedMoAP
from fedmoap.methods.promptfl import PromptFL
from fedmoap.run.studies.code import REPO, code_differs, commit_of, method_files, mixed_code


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def commits() -> tuple[str, str]:
    """(HEAD, the repository's first commit), or a skip where the package runs from no git checkout."""
    if not (REPO / ".git").exists():
        pytest.skip("the package runs from no git checkout")
    return git("rev-parse", "HEAD"), git("rev-list", "--max-parents=0", "HEAD").splitlines()[0]


def test_a_methods_files_are_its_module_and_the_method_modules_it_imports():
    files = method_files(PFedMoAP)
    assert "fedmoap/methods/pfedmoap.py" in files and "fedmoap/methods/gating.py" in files
    assert all(f.startswith("fedmoap/methods/") for f in files)
    assert "fedmoap/methods/promptfl.py" in method_files(PromptFL)


def test_cells_of_two_commits_whose_method_code_differs_are_named(commits):
    head, root = commits
    files = method_files(PromptFL)
    assert code_differs(head, head, files) is False
    assert code_differs(head, root, files) is True  # the first commit had none of today's method code
    assert code_differs(head, "0" * 40, files) is None  # a commit this checkout does not have
    cell = {"seed": 0, "final": 0.5}
    same = {"PromptFL": {"s": [{**cell, "code": {"commit": head}}, {**cell, "code": {"commit": head + "+dirty"}}]}}
    assert mixed_code({"PromptFL": PromptFL}, same) == ([], 0)
    mixed = {"PromptFL": {"s": [{**cell, "code": {"commit": head}}, {**cell, "code": {"commit": root}}]}}
    problems, unknown = mixed_code({"PromptFL": PromptFL}, mixed)
    assert unknown == 0 and len(problems) == 1 and problems[0].startswith("PromptFL: cells made at ")
    assert "promptfl.py" in problems[0]
    legacy = {"PromptFL": {"s": [{**cell, "code": {"commit": head}}, cell, {**cell, "code": {"commit": "0" * 40}}]}}
    assert mixed_code({"PromptFL": PromptFL}, legacy) == ([], 2)
    assert commit_of({"code": {"commit": "abc+dirty"}}) == "abc" and commit_of(cell) is None
