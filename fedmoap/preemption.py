"""Preemption: SIGUSR1 (SLURM's ``--signal``) or SIGTERM asks the run to stop at the next client
boundary; the round in flight is abandoned (the previous round's checkpoint stays the resume
point). On SIGUSR1 (the time-limit warning) a SLURM job requeues itself so that it resumes
automatically; on SIGTERM it does not (that is ``scancel``, or a preemption after which SLURM
requeues the job itself). During start-up, before anything is written (parsing the arguments,
importing the libraries), it stops the process at once instead; between the later set-up phases
the flag is checked, so no signal waits for round 1. Exit code :data:`EXIT_PREEMPTED`.

Ctrl-C (SIGINT) stops at once instead (:class:`Interrupted`, exit code :data:`EXIT_INTERRUPTED`,
128 + SIGINT as shells report it): the round in flight is lost as after a kill, and rerunning
the same command resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from fedmoap.errors import FedmoapError

__all__ = [
    "SIGNALS",
    "EXIT_PREEMPTED",
    "EXIT_INTERRUPTED",
    "Preempted",
    "Interrupted",
    "StoppedAtStartup",
    "StopFlag",
    "requeue_note",
    "startup_message",
    "stop_flag",
    "slurm_job_to_requeue",
    "requeue",
]

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_PREEMPTED = 3
EXIT_INTERRUPTED = 130


class Preempted(FedmoapError):
    """The run stopped on a signal after saving its last complete round."""


class Interrupted(FedmoapError):
    """The run stopped on Ctrl-C (SIGINT); its message says where and how to resume."""


class StoppedAtStartup(BaseException):
    """Raised by the SIGUSR1/SIGTERM handler inside :meth:`StopFlag.at_once`: during start-up,
    before anything is written, the process stops at once as on Ctrl-C. A ``BaseException``, like
    ``KeyboardInterrupt``, so that no library's ``except Exception`` (the argument parser's) turns it
    into an error about the input."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(startup_message(signal_number))
        self.signal = signal_number


class StopFlag:
    """Set by SIGUSR1/SIGTERM; call it to ask whether to stop.

    ``fedmoap fit`` installs the handlers first thing (before the heavy imports), so a signal that
    arrives during start-up is not lost; :func:`stop_flag` returns that same flag. Inside
    :meth:`at_once` (the start-up: parsing, imports) a signal raises :class:`StoppedAtStartup`
    instead of waiting for the next check of the flag.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}
        self._at_once = False

    def install(self) -> "StopFlag":
        for sig in SIGNALS:
            if sig not in self._old:
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except ValueError:  # not the main thread (some test runners): no handler
                    pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum
        if self._at_once:
            self._at_once = False
            raise StoppedAtStartup(signum)

    @contextmanager
    def at_once(self) -> Iterator["StopFlag"]:
        """A block in which a signal stops the process at once (:class:`StoppedAtStartup`): for
        start-up work that writes nothing and talks to no other process. A signal received
        before the block is raised on entering it."""
        if self.signal is not None:
            raise StoppedAtStartup(self.signal)
        self._at_once = True
        try:
            yield self
        finally:
            self._at_once = False

    def __call__(self) -> bool:
        return self.signal is not None

    def close(self) -> None:
        """Restore the previous handlers and clear the flag."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old, self.signal = {}, None


_FLAG = StopFlag()


def requeue_note(signal_number: int | None) -> str:
    """What is done about a stop by ``signal_number`` (this process's rank requeues): a SLURM job
    is requeued on SIGUSR1 (:func:`requeue`), not on SIGTERM."""
    if signal_number == signal.SIGUSR1:
        return requeue()
    return "not requeued (SIGTERM: a cancel, or SLURM requeues a preempted job itself)"


def startup_message(signal_number: int) -> str:
    """What a run stopped during start-up says (by the first task of a SLURM job step only does
    it requeue the job)."""
    how = (
        requeue_note(signal_number)
        if os.environ.get("SLURM_PROCID", "0") == "0"
        else "the job's first task requeues it if needed"
    )
    return f"stopped by signal {signal_number} during start-up, before anything was written; {how}"


def stop_flag() -> StopFlag:
    """The process's stop flag, with its handlers installed."""
    return _FLAG.install()


def slurm_job_to_requeue() -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array element, the job
    id otherwise, None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue() -> str:
    """Requeue this SLURM job (or array element); returns what was done, for the log."""
    job = slurm_job_to_requeue()
    if job is None:
        return "not under SLURM: re-run the same command to resume"
    restarts, limit = int(os.environ.get("SLURM_RESTART_COUNT", 0)), int(os.environ.get("FEDMOAP_MAX_REQUEUES", 50))
    if restarts >= limit:  # e.g. a time limit shorter than start-up plus one round
        return f"not requeued: SLURM job {job} was already restarted {restarts} times (FEDMOAP_MAX_REQUEUES)"
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"fedmoap: scontrol requeue {job} failed: {exc}", file=sys.stderr)
        return f"requeue of SLURM job {job} failed: resubmit to resume"
    return f"requeued SLURM job {job}"
