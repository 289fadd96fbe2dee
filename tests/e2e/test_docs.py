"""The documentation: the slim README, the mkdocs site beside it, and the links between them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """Link targets of ``path`` that are neither URLs nor same-page anchors (code excluded)."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_docs_site_builds_strictly_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # mkdocstrings rendered the docstrings, not just the page titles
    api = (site / "api" / "methods" / "index.html").read_text()
    assert "weighted_mean" in api and "FedAvgServer" in api
    config = (site / "api" / "config" / "index.html").read_text()
    assert "DataArgs" in config and ":class:" not in config


def test_readme_is_at_most_250_lines_and_keeps_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, len(text.splitlines())
    assert "bash scripts/setup.sh && fedmoap fit\n" in text
    assert "bash scripts/setup.sh && python -m pytest -q -n auto\n" in text
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && python -m pytest -q -n auto" in ci


def test_every_relative_link_in_readme_and_docs_points_to_a_file():
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            file = target.split("#", 1)[0]
            if file and not (path.parent / file).exists():
                broken.append(f"{path.relative_to(REPO)}: {target}")
    assert not broken, broken
    assert relative_links(README), "the README links to no page of docs/"


def test_every_docs_page_is_in_the_mkdocs_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())

    def pages(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in pages(item)]
        return [p for value in node.values() for p in pages(value)]

    in_nav = set(pages(config["nav"]))
    excluded = tuple(
        line.strip().rstrip("/") + "/" for line in config.get("exclude_docs", "").splitlines() if line.strip()
    )
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    on_disk = {p for p in on_disk if not p.startswith(excluded)}
    assert on_disk == in_nav, (on_disk - in_nav, in_nav - on_disk)


def test_every_study_table_in_readme_and_docs_is_its_record_and_no_prose_number_strays():
    """The tables between ``<!-- table: evidence/NAME.json -->`` markers are what the records make
    (scripts/docs_tables.py --check), and every two-decimal percentage elsewhere in the pages is a
    number some record holds; a number typed by hand fails here."""
    sys.path.insert(0, str(REPO / "scripts"))
    import docs_tables

    assert docs_tables.run(write=False) == []
    readme = README.read_text()
    assert "<!-- table: evidence/offline_default.json -->" in readme
    # the check can fail: one cell changed in a generated table, one number planted in prose
    block = docs_tables.BLOCK.search(readme)
    assert block is not None
    known = docs_tables.record_numbers()
    planted = readme.replace(block["table"], block["table"].replace(" ± ", " ± 1", 1))
    assert docs_tables.page("README.md", planted, known)[1][0] == (
        "README.md: the table of evidence/offline_default.json is not the record's (run --write)"
    )
    assert docs_tables.page("README.md", readme + "\nA stray 12.34 % here, 0.75 x rounds.\n", known)[1] == [
        "README.md: 12.34 is in no study record"
    ]
