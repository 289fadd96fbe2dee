"""Flower's processes on this host: a SuperLink (simulation or deployment) and SuperNodes on ports
the OS picks, each in its own process group so that stopping it stops everything it started, and
``flwr run`` against them. ``fedmoap flower`` runs its simulation through these; the deployment
tests and ``benchmarks/flower_deploy.py`` start a SuperLink and SuperNodes with them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fedmoap.errors import FedmoapError

__all__ = [
    "free_port",
    "executable",
    "flower_env",
    "write_connection",
    "start",
    "wait_ready",
    "start_superlink",
    "start_supernode",
    "stop",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that the OS reports free (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executable(name: str) -> str:
    """The path of a Flower command (``flwr``, ``flower-superlink``, ...): beside this Python, else
    on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FedmoapError(f"{name} not found: install Flower (pip install 'fedmoap[flower]')")
    return found


def flower_env(home: Path, threads: int | None = 1) -> dict[str, str]:
    """The environment of a Flower process: ``FLWR_HOME`` = ``home``, no update check and, with
    ``threads``, one BLAS/OpenMP pool of that size."""
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def write_connection(home: Path, name: str, port: int) -> Path:
    """A Flower configuration in ``home`` whose default SuperLink connection ``name`` is the
    insecure SuperLink on 127.0.0.1:``port``."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    return path


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """``command`` in a new session (its own process group), stdout and stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 120.0) -> None:
    """Wait until the SuperLink on ``port`` answers its health check; one-line error if it exits
    or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FedmoapError(f"flower-superlink exited with code {proc.returncode} (see {log})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise FedmoapError(f"flower-superlink did not answer on port {port} within {timeout_s:.0f} s (see {log})")


def start_superlink(
    home: Path, port: int, simulation: bool, log: Path, threads: int | None = 1, cwd: Path | None = None
) -> subprocess.Popen:
    """An insecure SuperLink on 127.0.0.1:``port`` (``--simulation``: Flower's Simulation Engine
    runs the SuperNodes) that runs apps in the environment it was started in
    (``--disable-runtime-dependency-installation``: no ``uv sync`` per run); ready on return."""
    command = [
        executable("flower-superlink"),
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    if simulation:
        command.append("--simulation")
    proc = start(command, flower_env(home, threads), log, cwd)
    try:
        wait_ready(proc, port, log)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_supernode(
    home: Path,
    superlink_port: int,
    port: int,
    node_config: str,
    log: Path,
    threads: int | None = 1,
    isolation: str = "subprocess",
    poll_s: float | None = None,
) -> subprocess.Popen:
    """An insecure SuperNode of the SuperLink on 127.0.0.1:``superlink_port``, its own Runtime
    API on ``port``, with ``node_config`` (``"partition-id=0 fedmoap-dir='/nodes/0'"``);
    ``poll_s``: its idle waits capped at that (:mod:`fedmoap.run.flower.supernode`), else
    Flower's ``flower-supernode`` as it is."""
    if poll_s is None:
        head = [executable("flower-supernode")]
    else:
        head = [sys.executable, "-m", "fedmoap.run.flower.supernode", "--poll-s", str(poll_s)]
    command = [
        *head,
        "--insecure",
        "--superlink",
        f"127.0.0.1:{superlink_port}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--isolation",
        isolation,
        "--node-config",
        node_config,
    ]
    return start(command, flower_env(home, threads), log)


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop ``proc`` and everything in its process group: SIGTERM, then SIGKILL after ``grace_s``."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        proc.poll()
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children may not be
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    proc.poll()
