"""Stopping on SIGUSR1/SIGTERM (fedmoap/preemption.py): the flag a signal sets, the start-up block a
signal stops at once, the handlers restored, and what is said about requeueing."""

from __future__ import annotations

import os
import signal

import pytest

from fedmoap.preemption import StopFlag, StoppedAtStartup, requeue, requeue_note, slurm_job_to_requeue, startup_message

SLURM = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_PROCID")


@pytest.fixture
def no_slurm(monkeypatch):
    for key in SLURM:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def flag():
    stop = StopFlag()
    before = signal.getsignal(signal.SIGUSR1)
    yield stop.install()
    stop.close()
    assert signal.getsignal(signal.SIGUSR1) == before  # close restores the previous handler


def test_a_signal_sets_the_flag(flag):
    assert not flag()
    os.kill(os.getpid(), signal.SIGTERM)
    assert flag() and flag.signal == signal.SIGTERM


def test_a_signal_inside_the_start_up_block_stops_at_once(flag, no_slurm):
    with pytest.raises(StoppedAtStartup) as stopped, flag.at_once():
        os.kill(os.getpid(), signal.SIGUSR1)
        pytest.fail("the signal did not stop the block")
    assert stopped.value.signal == signal.SIGUSR1
    assert str(stopped.value).startswith(f"stopped by signal {int(signal.SIGUSR1)} during start-up")
    with pytest.raises(StoppedAtStartup), flag.at_once():  # a signal received before the block
        pass
    assert not isinstance(stopped.value, Exception)  # no `except Exception` swallows it


def test_after_the_block_a_signal_only_sets_the_flag(flag):
    with flag.at_once():
        pass
    os.kill(os.getpid(), signal.SIGUSR1)
    assert flag.signal == signal.SIGUSR1


def test_the_job_to_requeue(no_slurm):
    assert slurm_job_to_requeue() is None
    no_slurm.setenv("SLURM_JOB_ID", "41")
    assert slurm_job_to_requeue() == "41"
    no_slurm.setenv("SLURM_ARRAY_JOB_ID", "40")
    no_slurm.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_to_requeue() == "40_3"


def test_what_is_said_about_requeueing(no_slurm, tmp_path, capsys):
    assert requeue() == "not under SLURM: re-run the same command to resume"
    assert requeue_note(signal.SIGTERM).startswith("not requeued (SIGTERM")
    assert requeue_note(signal.SIGUSR1) == requeue()
    no_slurm.setenv("SLURM_JOB_ID", "41")
    no_slurm.setenv("SLURM_RESTART_COUNT", "2")
    no_slurm.setenv("FEDMOAP_MAX_REQUEUES", "2")
    assert requeue() == "not requeued: SLURM job 41 was already restarted 2 times (FEDMOAP_MAX_REQUEUES)"
    no_slurm.setenv("FEDMOAP_MAX_REQUEUES", "3")
    no_slurm.setenv("PATH", str(tmp_path))  # no scontrol here: the requeue fails and says so
    assert requeue() == "requeue of SLURM job 41 failed: resubmit to resume"
    assert "scontrol requeue 41 failed" in capsys.readouterr().err
    no_slurm.setenv("SLURM_PROCID", "1")
    assert startup_message(signal.SIGUSR1).endswith("the job's first task requeues it if needed")
