"""Flower's processes on this host (fedmoap/run/flower/local.py): free ports from the OS, a connection
for ``flwr run``, and stopping a process stops its whole process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fedmoap.run.flower.local import flower_env, free_port, start, stop, write_connection


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead; its parent, init here, has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_stopping_a_process_stops_its_children_too(tmp_path):
    code = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    code += "print(c.pid, flush=True); time.sleep(60)"
    proc = start([sys.executable, "-c", code], dict(os.environ), tmp_path / "log")
    assert os.getpgid(proc.pid) == proc.pid  # its own process group
    deadline = time.monotonic() + 30
    while not (tmp_path / "log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int((tmp_path / "log").read_text().split()[0])
    assert not gone(child)
    stop(proc, grace_s=2.0)
    assert proc.poll() is not None
    time.sleep(0.2)
    assert gone(child)


def test_a_connection_names_the_local_superlink_without_deprecated_fields(tmp_path):
    import tomllib

    port = free_port()
    assert 0 < port < 65536
    path = write_connection(tmp_path / "home", "deployment", port)
    conf = tomllib.loads(path.read_text())["superlink"]
    assert conf == {"default": "deployment", "deployment": {"address": f"127.0.0.1:{port}", "insecure": True}}
    env = flower_env(tmp_path / "home")
    assert env["FLWR_HOME"] == str(tmp_path / "home") and env["OMP_NUM_THREADS"] == "1"


def test_the_supernode_waits_at_most_poll_s_and_bad_options_are_one_line(capsys):
    from fedmoap.run.flower.supernode import capped_time, main

    fast = capped_time(0.01)
    t0 = time.perf_counter()
    fast.sleep(3)
    assert time.perf_counter() - t0 < 1.0 and fast.time is time.time and fast.monotonic is time.monotonic
    for argv, message in (
        (["--poll-s"], "--poll-s needs a value"),
        (["--poll-s", "x"], "--poll-s 'x' is not a number"),
        (["--poll-s", "0"], "--poll-s must be > 0"),
    ):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == message
