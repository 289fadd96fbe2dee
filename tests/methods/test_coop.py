"""CoOp (fedmoap/methods/coop.py): local training on every client, every round, or once."""

from __future__ import annotations

from tests.worlds import smoke_fit


def test_coop_trains_every_client_every_round(tmp_path):
    results = smoke_fit(tmp_path, "--method", "coop", "--fed.rounds", "2", "--fed.participation", "0.5")
    assert all(r["participants"] == list(range(6)) for r in results["rounds"])
    once = smoke_fit(
        tmp_path,
        "--method",
        "coop",
        "--method.schedule",
        "once",
        "--method.epochs",
        "3",
        "--fed.rounds",
        "2",
        run="once",
    )
    assert [r["participants"] for r in once["rounds"]] == [list(range(6)), []]
    assert once["rounds"][0]["clients"] == once["rounds"][1]["clients"]
