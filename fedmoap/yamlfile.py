"""Reading the user's YAML strictly: a key given twice in one mapping is an error, not "the last
one wins", and a config file that is empty, binary or not a mapping is named in one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

MERGE_TAG = "tag:yaml.org,2002:merge"


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


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping a ``--config`` file holds; a :class:`~fedmoap.errors.FedmoapError` naming the
    file if it is missing, not text, empty, not YAML, repeats a key or is not a mapping."""
    from fedmoap.errors import FedmoapError

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FedmoapError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
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
