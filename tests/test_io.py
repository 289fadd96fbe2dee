"""File helpers (fedmoap/io.py): the file lock where flock is not implemented."""

from __future__ import annotations

import fcntl

from fedmoap.io import file_lock


def test_lock_falls_back_to_lockf(tmp_path, monkeypatch):
    def no_flock(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with file_lock(tmp_path / "x.pt"):
        assert (tmp_path / "x.lock").exists()
