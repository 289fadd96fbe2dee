"""``fedmoap methods`` (fedmoap/run/matrix.py): each method's declarations and refusals, the
refused cells written as a product of values where they are one."""

from __future__ import annotations

import pytest

from fedmoap.federation.combinations import DP_MODES, ENGINES, EVAL_MODES, SCHEDULES, Cell
from fedmoap.run.cli import main
from fedmoap.run.matrix import USAGE, cells_table, coordinates, dims, summary, where


def test_fedmoap_methods_reads_well_and_refuses_what_it_does_not_know(capsys):
    assert main(["methods", "pfedmoap"]) == 0
    text = capsys.readouterr().out
    assert "pfedmoap: supported in" in text and "client knobs: experts_per_client" in text
    assert "refused where dp client_upload x eval unseen_clients" in text
    assert main(["methods", "nosuchmethod"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchmethod" in err[0]


def test_a_cell_is_read_by_its_last_evaluation_mode():
    assert coordinates(Cell(dp="record_sgd", modes=("local", "unseen_clients"), engine="flower")) == (
        "record_sgd",
        "unseen_clients",
        "local",
        "flower",
    )
    assert [label for label, _ in dims()] == ["dp", "eval", "schedule", "engine"]


def test_refused_cells_are_a_product_where_they_are_one():
    every = {(d, e, s, g) for d in DP_MODES for e in EVAL_MODES for s in SCHEDULES for g in ENGINES}
    assert where(every) == "every cell"
    dp = DP_MODES[1]
    assert where({c for c in every if c[0] == dp}) == f"dp {dp}"
    block = {c for c in every if c[0] == dp and c[1] in EVAL_MODES[1:3]}
    assert where(block) == f"dp {dp} x eval {'|'.join(EVAL_MODES[1:3])}"
    odd = {(DP_MODES[0], EVAL_MODES[0], SCHEDULES[0], ENGINES[0]), (dp, EVAL_MODES[1], SCHEDULES[0], ENGINES[0])}
    assert where(odd) == "; ".join(" ".join(c) for c in sorted(odd))  # not a product: listed


def test_shared_refusals_are_stated_once_and_every_cell_has_a_row():
    text = summary(["promptfl", "fedprox"])
    lines = text.splitlines()
    total = len(DP_MODES) * len(EVAL_MODES) * len(SCHEDULES) * len(ENGINES)
    assert lines[0].startswith(f"2 methods x {total} cells (")
    shared = lines.index("every method:")
    assert lines[shared + 1].startswith("  refused where ")
    assert any(line.startswith("promptfl: supported in ") for line in lines)
    header, *rows = cells_table(["promptfl"]).split("\n")
    assert len(rows) == total and all(r.split("\t")[5] in ("supported", "refused") for r in rows)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_usage(flag, capsys):
    assert main(["methods", flag]) == 0
    assert capsys.readouterr().out.strip() == USAGE
