"""Reading the user's YAML strictly: a key given twice in one mapping is an error, not "the last
one wins", and a config file that is empty, binary or not a mapping is named in one line."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

__all__ = [
    "MERGE_TAG",
    "MAX_FILE_BYTES",
    "DuplicateKeyError",
    "UniqueKeyLoader",
    "check_unique_keys",
    "load",
    "strict",
    "read_limited",
    "read_config",
]

MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_FILE_BYTES = 1 << 20
"""The largest config or study file read (1 MiB; the paper configs are under 2 KiB)."""


class DuplicateKeyError(ConstructorError):
    """A mapping holds the same key twice."""

    def __init__(self, key: str, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"key {key!r} appears twice (lines {first.line + 1} and {again.line + 1})", again)
        self.key = key


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on a repeated mapping key (keys
    brought in by a ``<<`` merge may still be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        check_unique_keys(node)
        return super().construct_mapping(node, deep)


def check_unique_keys(node: yaml.Node) -> None:
    """Raise :class:`DuplicateKeyError` for the first mapping in ``node`` (not its children) that
    repeats a scalar key."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[tuple[str, str], yaml.Mark] = {}
    for key, _ in node.value:
        if key.tag == MERGE_TAG or not isinstance(key, yaml.ScalarNode):
            continue
        ident = (key.tag, key.value)
        if ident in seen:
            raise DuplicateKeyError(key.value, seen[ident], key.start_mark)
        seen[ident] = key.start_mark


def load(text: str) -> Any:
    """``yaml.safe_load`` that refuses repeated keys."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def strict(loader: Callable[[str], Any]) -> Callable[[str], Any]:
    """``loader`` (e.g. jsonargparse's YAML loader, which reads ``--config`` files and inline
    values) preceded by a check for repeated keys; other YAML errors are left to ``loader``."""

    def strict_loader(text: str) -> Any:
        if isinstance(text, str) and ":" in text:
            try:
                load(text)
            except DuplicateKeyError:
                raise
            except yaml.YAMLError:
                pass
        return loader(text)

    strict_loader.__wrapped__ = loader  # type: ignore[attr-defined]
    return strict_loader


def read_limited(path: str | Path, key: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``; a :class:`~fedmoap.errors.FedmoapError` naming it
    (as ``key`` ``path``) if it cannot be read, is not a regular file (a directory, a device such as
    ``/dev/zero``, a pipe) or holds more than ``limit`` bytes. At most ``limit + 1`` bytes are read."""
    from fedmoap.errors import FedmoapError

    path = Path(path)
    try:
        mode = path.stat().st_mode  # before opening: opening a pipe waits for its writer
        if stat.S_ISDIR(mode):
            raise FedmoapError(f"{key} {path} is a directory, not a file")
        if not stat.S_ISREG(mode):  # a pipe (<(...)) would also be drained by the first of two reads
            raise FedmoapError(f"{key} {path} is not a regular file (a device or a pipe); save the settings to a file")
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise FedmoapError(f"{key} {path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > limit:
        size = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
        raise FedmoapError(f"{key} {path} is larger than {size}, too large for a settings file")
    return raw


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping a ``--config`` file holds; a :class:`~fedmoap.errors.FedmoapError` naming the
    file if it is missing, not a regular file, over 1 MiB, not text, empty, not YAML, repeats a key
    or is not a mapping."""
    from fedmoap.errors import FedmoapError

    path = Path(path)
    raw = read_limited(path, "--config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FedmoapError(f"--config {path} is not a text (YAML) file") from None
    if "\x00" in text:
        raise FedmoapError(f"--config {path} is not a text (YAML) file")
    try:
        cfg = load(text)
    except DuplicateKeyError as exc:
        raise FedmoapError(f"--config {path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise FedmoapError(f"--config {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    if cfg is None:
        raise FedmoapError(f"--config {path} is empty")
    if not isinstance(cfg, dict):
        raise FedmoapError(f"--config {path} is not a mapping of settings (it holds a {type(cfg).__name__})")
    return cfg
