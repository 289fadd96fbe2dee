"""Preemption: SIGUSR1 (SLURM's ``--signal``) or SIGTERM asks the run to stop at the next client
boundary; the round in flight is abandoned (the previous round's checkpoint stays the resume
point). On SIGUSR1 (the time-limit warning) a SLURM job requeues itself so that it resumes
automatically; on SIGTERM it does not (that is ``scancel``, or a preemption after which SLURM
requeues the job itself). Exit code :data:`EXIT_PREEMPTED`.

Ctrl-C (SIGINT) stops at once instead (:class:`Interrupted`, exit code :data:`EXIT_INTERRUPTED`,
128 + SIGINT as shells report it): the round in flight is lost as after a kill, and rerunning
the same command resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

from fedmoap.errors import FedmoapError

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_PREEMPTED = 3
EXIT_INTERRUPTED = 130


class Preempted(FedmoapError):
    """The run stopped on a signal after saving its last complete round."""


class Interrupted(FedmoapError):
    """The run stopped on Ctrl-C (SIGINT); its message says where and how to resume."""


class StopFlag:
    """Set by SIGUSR1/SIGTERM; call it to ask whether to stop.

    ``fedmoap fit`` installs the handlers first thing (before the heavy imports), so a signal that
    arrives during start-up is not lost; :func:`stop_flag` returns that same flag.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}

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

    def __call__(self) -> bool:
        return self.signal is not None

    def close(self) -> None:
        """Restore the previous handlers and clear the flag."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old, self.signal = {}, None


_FLAG = StopFlag()


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
