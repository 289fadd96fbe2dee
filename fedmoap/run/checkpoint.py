"""Round checkpoints: everything needed for an identical continuation, written atomically.

A checkpoint holds the server state, the client store's index (the client states themselves are
versioned files beside it, see :mod:`fedmoap.federation.store`), the finished round and the results so far.
No RNG state is needed: every random draw derives from (seed, round, client id).
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fedmoap.errors import FedmoapError
from fedmoap.io import atomic_torch_save, round_file, round_versions

__all__ = ["CKPT_FORMAT", "code_version", "checkpoint_path", "save_checkpoint", "load_latest", "latest_round"]

CKPT_FORMAT = 3


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """The code that writes a checkpoint: the installed fedmoap version and, when the package runs
    from a git checkout, its commit (with ``+dirty`` for uncommitted changes). Recorded in every
    checkpoint and in ``results.json``, so a resumed run that crossed a code change says so."""
    try:
        version = metadata.version("fedmoap")
    except metadata.PackageNotFoundError:
        version = None
    commit = None
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            head = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            )
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if head.returncode == 0:
                commit = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": version, "commit": commit}


def checkpoint_path(run_dir: Path, t: int) -> Path:
    return run_dir / "checkpoints" / round_file(t)


def save_checkpoint(run_dir: Path, t: int, state: dict[str, Any], keep: int) -> Path:
    """Write round ``t``'s checkpoint, then delete all but the newest ``keep``."""
    path = checkpoint_path(run_dir, t)
    atomic_torch_save(path, {"format": CKPT_FORMAT, "round": t, "code": code_version(), **state})
    for old in _rounds(run_dir)[: -max(keep, 1)]:
        checkpoint_path(run_dir, old).unlink(missing_ok=True)
    return path


def load_latest(run_dir: Path, config_digest: str) -> dict[str, Any] | None:
    """The newest checkpoint of the run, or None. A file that cannot be read, or that belongs to
    another config, is refused with an error naming it (and left in place)."""
    rounds = _rounds(run_dir)
    if not rounds:
        return None
    path = checkpoint_path(run_dir, rounds[-1])
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FedmoapError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); "
            "move it away to resume from an earlier one"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise FedmoapError(f"checkpoint {path} is not a fedmoap checkpoint of format {CKPT_FORMAT}")
    if ckpt.get("config_digest") != config_digest:
        raise FedmoapError(f"checkpoint {path} was written by a run with another config")
    problem = _structure_problem(ckpt, rounds[-1])
    if problem:
        raise FedmoapError(
            f"checkpoint {path} is not a fedmoap checkpoint of format {CKPT_FORMAT} "
            f"({problem}); move it away to resume from an earlier one"
        )
    return ckpt


def _structure_problem(ckpt: dict[str, Any], t: int) -> str | None:
    """What is wrong with the shape of a loaded checkpoint of round ``t``, or None."""
    store, history = ckpt.get("store"), ckpt.get("history")
    if not isinstance(ckpt.get("server"), dict):
        return "'server' is not a mapping"
    if not isinstance(store, dict) or not isinstance(store.get("index"), dict):
        return "'store' has no mapping 'index'"
    try:
        [(int(c), int(v)) for c, v in store["index"].items()]
    except (TypeError, ValueError):
        return "'store.index' does not map client ids to rounds"
    if not isinstance(history, list) or not all(
        isinstance(r, dict) and isinstance(r.get("round"), int) and isinstance(r.get("participants"), list)
        for r in history
    ):
        return "'history' is not a list of round records"
    if ckpt.get("round") != t or [r["round"] for r in history] != list(range(1, t + 1)):
        return f"it does not hold rounds 1 to {t}"
    for key in ("backbone", "privacy"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            return f"{key!r} is not a mapping"
    return None


def latest_round(run_dir: Path) -> int:
    """The newest checkpointed round of the run (0 if none)."""
    rounds = _rounds(run_dir)
    return rounds[-1] if rounds else 0


def _rounds(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return round_versions(folder)
