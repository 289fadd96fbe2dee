"""Atomic file writes: a reader (or a crash) never sees a half-written file."""
from __future__ import annotations

import fcntl
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` made atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


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
