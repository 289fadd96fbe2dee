"""Atomic file writes: a reader (or a crash) never sees a half-written file.

A write goes to a temporary file beside its target, named ``.<target name>.<random>`` +
:data:`TMP_SUFFIX`, that is renamed over the target once complete; a process killed in between
leaves the temporary behind, which :func:`is_temporary` recognises and :func:`remove_temporaries`
deletes on the next start.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fedmoap.errors import FedmoapError

__all__ = [
    "TMP_SUFFIX",
    "is_temporary",
    "remove_temporaries",
    "temporary_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "ROUND_FILE",
    "round_file",
    "round_versions",
    "atomic_torch_save",
    "check_directory",
    "check_output_file",
    "writable",
    "write_error",
    "file_lock",
    "cache_lock",
    "try_lock",
]

TMP_SUFFIX = ".fedmoap-tmp"
_OLD_TMP = re.compile(r"\.(config\.yaml|split\.json|results\.json|round_\d+\.pt)\.[a-z0-9_]{8}\.tmp")
"""The temporaries of versions before :data:`TMP_SUFFIX` (``tempfile.mkstemp``'s names)."""


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary that an atomic write left (its process was killed)."""
    return (name.startswith(".") and name.endswith(TMP_SUFFIX)) or _OLD_TMP.fullmatch(name) is not None


def remove_temporaries(root: Path) -> None:
    """Delete the temporaries killed writes left anywhere under ``root``."""
    for p in sorted(Path(root).rglob("*"), reverse=True):
        if is_temporary(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def temporary_path(path: Path) -> Path:
    """A fresh name for a temporary beside ``path`` (for writers that need a path, not a file)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the open file ``fd`` (the one place atomic writes write bytes)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        try:
            _write_fd(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # os.write names no file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


ROUND_FILE = re.compile(r"round_(\d+)\.pt")
"""A state kept per round (a client's in the store, a run's checkpoint): ``round_<t>.pt``."""


def round_file(t: int) -> str:
    """The file name of round ``t``'s state."""
    return f"round_{t:04d}.pt"


def round_versions(folder: Path) -> list[int]:
    """The rounds whose state files ``folder`` holds, in order."""
    return sorted(int(m.group(1)) for p in Path(folder).iterdir() if (m := ROUND_FILE.fullmatch(p.name)))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` made atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def check_directory(path: Path, key: str) -> None:
    """Refuse a directory-to-be that is a file, or lies under a file (``key`` names the setting)."""
    path = Path(path).expanduser()
    if path.is_symlink() and not path.exists():
        raise FedmoapError(f"{key} {path} is a broken symbolic link")
    if path.exists() and not path.is_dir():
        raise FedmoapError(f"{key} {path} is a file, not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FedmoapError(f"{key} {path} lies under {parent}, which is a file, not a directory")
            return


def check_output_file(path: Path, key: str) -> None:
    """Refuse, before any work, a file-to-be that an atomic write could not create: a directory
    or another non-regular file in its place, a file among its parents, or a directory in which
    files cannot be created (``key`` names the option, e.g. ``--out``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FedmoapError(f"{key} {path} is a directory, not a file")
    if path.exists() and not path.is_file():
        raise FedmoapError(f"{key} {path} is not a regular file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FedmoapError(f"{key} {path} lies under {parent}, which is a file, not a directory")
            if not writable(parent):
                raise FedmoapError(f"{key} {path}: files cannot be created in {parent} (read-only or no permission)")
            return


def writable(path: Path) -> bool:
    """Whether files can be created in the directory ``path`` (or, while it does not exist, in
    its nearest existing parent): false on a read-only file system or without permission."""
    path = Path(path).expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


def write_error(exc: OSError, after: str) -> str:
    """One line for a failed write or read: the path, the reason, then ``after`` (where the run
    stopped and how to go on)."""
    where = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"no space left on the device writing {where} (free space first)"
    elif exc.errno == errno.EROFS:
        reason = f"{where} is on a read-only file system"
    else:
        reason = f"{where}: {exc.strerror or exc}"
    return f"{reason}; {after}"


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on a ``.lock`` file beside ``path``, so that processes sharing a cache do
    not race. ``flock`` where the file system supports it, else POSIX ``lockf`` (Lustre mounted
    without ``flock``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            unlock = fcntl.LOCK_UN
            release = fcntl.flock
        except OSError:
            fcntl.lockf(handle, fcntl.LOCK_EX)
            release, unlock = fcntl.lockf, fcntl.LOCK_UN
        try:
            yield
        finally:
            release(handle, unlock)


@contextmanager
def cache_lock(path: Path, key: str, missing: int):
    """:func:`file_lock` for filling ``missing`` entries of a cache file: a lock that cannot be
    created (a read-only cache) is one line naming the cache setting ``key``."""
    try:
        lock = file_lock(path)
        lock.__enter__()
    except OSError as exc:
        raise FedmoapError(
            f"{key}: {missing} entries of {path} are not cached yet and the cache "
            f"cannot be written ({exc.strerror}: {exc.filename or path}); point {key} "
            "at a writable directory"
        ) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def try_lock(handle: Any) -> bool:
    """Take an exclusive lock on the open file ``handle`` without waiting; False if another
    process holds it. Freed when the process ends, however it ends."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # no flock on this file system (Lustre without it): POSIX record locks
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
