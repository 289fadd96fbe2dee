"""The run directory: what may be in it, whether it can be resumed, and its lock.

``fedmoap fit`` checks the directory before anything is built and again, under the lock, just
before its first write; a directory holding files fedmoap did not write (a ``results.json``
that is a folder, a ``checkpoints`` that is a file, ...) or that cannot be written is refused
untouched. One ``fit`` at a time writes into a directory: its rank-0 process holds an
exclusive ``flock`` on :data:`LOCK_NAME` (freed by the kernel however the process ends) and
writes its pid and host into it, so that a second ``fit`` is refused naming the holder.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from fedmoap.config import yamlfile
from fedmoap.config.digest import config_digest, with_added_defaults
from fedmoap.config.sections import neutral_keys
from fedmoap.distributed import Comm
from fedmoap.errors import FedmoapError
from fedmoap.io import ROUND_FILE, check_directory, is_temporary, remove_temporaries, try_lock, writable, write_error
from fedmoap.run.checkpoint import latest_round

__all__ = [
    "LOCK_NAME",
    "FILES",
    "DIRS",
    "OWN_FILES",
    "check_layout",
    "check_run_dir",
    "RunLock",
    "Progress",
    "Seen",
    "stopped_at",
    "claim",
]

LOCK_NAME = ".fedmoap.lock"
FILES = ("config.yaml", "split.json", "results.json", LOCK_NAME)
"""Files fedmoap writes at the top of a run directory."""
DIRS = ("checkpoints", "clients", "tensorboard", "tensorboard/version_0", "tensorboard/hparams")
"""Folders it writes into."""
OWN_FILES = {"config.yaml", "split.json", "tensorboard", LOCK_NAME}
"""What a start that was killed before its first round can leave in a run directory (besides
the temporaries of killed writes)."""


def check_layout(run_dir: Path) -> None:
    """Refuse a run directory whose entries are not of the kind fedmoap writes, or where it
    cannot write (read-only file system, no permission)."""

    def refuse(path: Path, want: str) -> None:
        kind = "folder" if path.is_dir() else "file" if path.exists() else "broken link"
        raise FedmoapError(
            f"run_dir {run_dir}: {path} is a {kind}, not the {want} fedmoap writes; move it away or use a new --run_dir"
        )

    for name in FILES:
        p = run_dir / name
        if (p.exists() or p.is_symlink()) and not p.is_file():
            refuse(p, "file")
    for name in DIRS:
        p = run_dir / name
        if (p.exists() or p.is_symlink()) and not p.is_dir():
            refuse(p, "folder")
    folders = [run_dir] + [run_dir / d for d in DIRS if (run_dir / d).is_dir()]
    for sub in ("checkpoints", "clients"):
        if not (run_dir / sub).is_dir():
            continue
        for p in (run_dir / sub).iterdir():
            if sub == "clients":
                if not p.name.isdigit() or not p.is_dir():
                    refuse(p, "per-client folder")
                folders.append(p)
                entries = list(p.iterdir())
            else:
                entries = [p]
            for e in entries:
                if ROUND_FILE.fullmatch(e.name) and not e.is_file():
                    refuse(e, "state file")
    for folder in folders:
        if not writable(folder):
            raise FedmoapError(
                f"run_dir {run_dir}: cannot write into {folder} (a read-only file "
                "system or no permission); make it writable or use another --run_dir"
            )


def check_run_dir(run_dir: Path, cfg_dict: dict[str, Any], digest: Any = None) -> bool:
    """True if ``run_dir`` holds this run already (resume); False for a new run (the directory
    is absent, empty, or holds only what an aborted start leaves); an error if it holds another
    run or something else. ``digest`` computes a config's digest (default:
    :func:`fedmoap.config.digest.config_digest`)."""
    run_dir = Path(run_dir)
    check_directory(run_dir, "run_dir")
    if not writable(run_dir):
        raise FedmoapError(
            f"run_dir {run_dir}: cannot write into it (a read-only file system or no "
            "permission); make it writable or use another --run_dir"
        )
    names = {p.name for p in run_dir.iterdir()} if run_dir.exists() else set()
    names = {n for n in names if not is_temporary(n)}
    if run_dir.exists():
        check_layout(run_dir)
    stored_path = run_dir / "config.yaml"
    if not {"config.yaml", "split.json"} <= names:
        if names - OWN_FILES:
            raise FedmoapError(
                f"run_dir {run_dir} is not empty and holds no fedmoap run (config.yaml, "
                "split.json); choose an empty or new directory"
            )
        return False
    if digest is None:
        digest = config_digest
    try:
        stored = yamlfile.load(stored_path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise FedmoapError(f"{stored_path} is not readable YAML ({' '.join(str(exc).split())})") from None
    if isinstance(stored, dict):  # runs made before a section existed have its defaults
        stored = with_added_defaults(stored)
    if (
        not isinstance(stored, dict)
        or not isinstance(stored.get("method"), dict)
        or any(not isinstance(stored.get(k), dict) for k, v in cfg_dict.items() if isinstance(v, dict))
    ):
        raise FedmoapError(
            f"{stored_path} is not a fedmoap config of this version (a mapping with "
            f"sections {', '.join(k for k, v in cfg_dict.items() if isinstance(v, dict))}); "
            "start the run in a new --run_dir"
        )
    if digest(stored) != digest(cfg_dict):
        neutral = neutral_keys()
        diffs = [
            f"{s}.{k}: {stored[s].get(k)!r} -> {v!r}"
            for s, sec in cfg_dict.items()
            if isinstance(sec, dict) and s != "method"
            for k, v in sec.items()
            if (s, k) not in neutral and stored[s].get(k) != v
        ]
        diffs += [
            f"{k}: {stored.get(k)!r} -> {v!r}"
            for k, v in cfg_dict.items()
            if (not isinstance(v, dict) or k == "method") and stored.get(k) != v
        ]
        raise FedmoapError(
            f"run_dir {run_dir} holds a run with another config ({'; '.join(diffs[:5])}); "
            "use a new --run_dir to start a different run"
        )
    return True


class RunLock:
    """The exclusive right to write into a run directory (taken by rank 0 only)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._handle = None

    def acquire(self) -> None:
        """Take the lock, creating the run directory if needed; a held lock is refused with
        the holder that the lock file names."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # not truncated: it names the holder
        try:
            free = try_lock(handle)
        except OSError as exc:  # a file system without any locks: run as before locks existed
            handle.close()
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            print(
                f"fedmoap: warning: cannot lock {self.path} ({exc.strerror}); make sure no other "
                "fedmoap fit writes into this run directory",
                file=sys.stderr,
            )
            return
        if not free:
            handle.seek(0)
            holder = " ".join(handle.read().split()) or "another process"
            handle.close()
            raise FedmoapError(
                f"run_dir {self.path.parent} is in use by another fedmoap fit ({holder}; "
                f"lock {self.path}); wait for it to end or stop it, then rerun"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the last descriptor frees the lock
            self._handle = None


@dataclass
class Progress:
    """How far a run has got, for the line a stop prints (:func:`stopped_at`)."""

    stage: Literal["set-up", "start", "round", "finish"] = "set-up"
    round: int = 0
    """The round in flight (stage ``round``)."""
    done: int = 0
    """The newest checkpointed round."""


@dataclass(frozen=True)
class Seen:
    """What set-up found in the run directory, checked again when the run claims it."""

    resumable: bool
    latest: int
    """The newest checkpointed round (0: none)."""


def stopped_at(where: Progress, what: str) -> str:
    """Where a run stopped by ``what`` (Ctrl-C, a failed write) left off, and how to go on."""
    stage, r, done = where.stage, where.round, where.done
    if stage == "set-up":
        return f"{what} during set-up, before anything was written to the run directory; rerun the same command"
    if stage == "start":
        return f"{what} before round {done + 1} began; rerun the same command"
    if stage == "finish":
        return f"{what} after the last round, while writing the results; rerun the same command to finish"
    resume = f"round {done}'s checkpoint is the resume point" if done else "no round was finished"
    return f"{what} during round {r}; {resume}; rerun the same command to resume"


def claim(run_dir: Path, cfg_dict: dict[str, Any], comm: Comm, lock: RunLock, seen: Seen) -> None:
    """Take the run directory's lock (rank 0) and check that the directory is still as set-up
    found it (``seen``: resumable?, newest checkpoint); then delete killed writes' temporaries.
    Every rank raises the same error, so that none waits for the others."""
    error = None
    if comm.is_main:
        try:
            lock.acquire()
            if Seen(check_run_dir(run_dir, cfg_dict), latest_round(run_dir)) != seen:
                raise FedmoapError(
                    f"run_dir {run_dir} changed while this run was setting up (another "
                    "fedmoap fit wrote into it); rerun the same command"
                )
            remove_temporaries(run_dir)
        except FedmoapError as exc:
            error = str(exc)
        except OSError as exc:
            error = write_error(exc, "rerun the same command")
        if error:
            lock.release()
    error = comm.broadcast(error)
    if error:
        raise FedmoapError(error)
