"""The schedule (fedmoap/federation/schedule.py): how many clients train in round t."""

from __future__ import annotations

from fedmoap.federation.schedule import Schedule
from fedmoap.run.cli import main


def test_participants_round_half_up():
    assert len(Schedule(0, 7, 0.5).participants(1)) == 4
    assert len(Schedule(0, 5, 0.5).participants(1)) == 3
    assert len(Schedule(0, 30, 0.25).participants(1)) == 8
    assert len(Schedule(0, 10, 0.01).participants(1)) == 1


def test_exact_participant_count_draws_that_many_every_round(tmp_path, capsys):
    schedule = Schedule(0, 30, count=7, held_out=frozenset({0, 1}))
    for t in range(1, 6):
        drawn = schedule.participants(t)
        assert len(drawn) == 7 and not {0, 1} & set(drawn)
    assert main(["fit", "--fed.participants", "3", "--fed.participation", "0.5", "--run_dir", str(tmp_path / "r")]) == 2
    assert "fed.participants and fed.participation" in capsys.readouterr().err
    assert main(["fit", "--fed.participants", "6", "--run_dir", str(tmp_path / "r")]) == 2
    assert "fed.participants must be in [1, data.num_clients = 5]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evaluated_clients_are_a_seeded_sample_before_the_last_round():
    schedule = Schedule(0, 30, rounds=4, eval_clients=5, held_out=frozenset({3}))
    for t in (1, 2, 3):
        drawn = schedule.evaluated(t)
        assert len(drawn) == 5 and drawn == sorted(drawn) and 3 not in drawn
        assert drawn == Schedule(0, 30, rounds=4, eval_clients=5, held_out=frozenset({3})).evaluated(t)
    assert schedule.evaluated(1) != schedule.evaluated(2)
    assert schedule.evaluated(4) == schedule.evaluated(9) == schedule.clients  # the last round: everyone
    assert Schedule(0, 30, rounds=4).evaluated(1) == Schedule(0, 30, rounds=4, eval_clients=30).evaluated(1)
