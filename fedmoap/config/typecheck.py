"""Every setting checked against the type its dataclass declares, whatever path it came by.

The parser checks types too, but a value can reach a run around it (a method re-instantiated
with its own defaults, a config built in Python, a knob of a method the parser could not
introspect); :func:`type_problems` is the one check that covers every config section and every
knob of every method, including knobs added later, from their annotations alone.

Rules beyond ``isinstance``: a bool is not an int or a float, a float (even ``4.0``) is not an
int, and a float must be finite unless its field says otherwise with ``field(metadata=NONFINITE)``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

__all__ = ["NONFINITE", "type_problems", "mismatch"]

NONFINITE = {"nonfinite": True}
"""Field metadata of a float setting for which ``inf`` (or ``nan``) is a meaningful value."""


def type_problems(obj: Any, prefix: str = "") -> list[str]:
    """One message per field of the dataclass ``obj`` (recursively through dataclass-valued
    fields, e.g. a config's sections and its method) whose value does not match its annotation,
    each naming ``prefix.field`` and the value."""
    hints = typing.get_type_hints(type(obj))
    out: list[str] = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and isinstance(value, _plain(hints[f.name])):
            out += type_problems(value, key)
            continue
        expected = mismatch(value, hints[f.name], finite=not f.metadata.get("nonfinite", False))
        if expected:
            out.append(f"{key} must be {expected}, got {value!r}")
    return out


def mismatch(value: Any, hint: Any, finite: bool = True) -> str | None:
    """None if ``value`` matches the type ``hint``; otherwise what was expected, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return None
    if hint is None or hint is type(None):
        return None if value is None else "null"
    if origin is Union or origin is types.UnionType:
        arms = [mismatch(value, arm, finite) for arm in args]
        return None if None in arms else " or ".join(dict.fromkeys(arms))
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return None
        return "one of " + ", ".join(map(repr, args))
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "a number"
        return None if not finite or math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, tuple, set, frozenset, dict):
        return _container(value, origin, args, finite)
    if isinstance(hint, type):
        return None if isinstance(value, hint) else f"a {hint.__name__}"
    return None  # a construct this check does not know (e.g. a TypeVar): left to the parser


def _container(value: Any, origin: type, args: tuple, finite: bool) -> str | None:
    name = {list: "a list", tuple: "a tuple", set: "a set", frozenset: "a set", dict: "a mapping"}[origin]
    if origin is tuple and isinstance(value, list):
        value = tuple(value)  # YAML has no tuples
    if not isinstance(value, origin):
        return name
    if origin is dict:
        key_t, value_t = args or (Any, Any)
        for k, v in value.items():
            why = mismatch(k, key_t, finite) or mismatch(v, value_t, finite)
            if why:
                return f"{name} of {_words(key_t)} to {_words(value_t)} ({k!r}: {v!r} is not)"
        return None
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return f"{name} of {len(args)} items"
        pairs = list(zip(value, args))
    else:
        pairs = [(item, args[0] if args else Any) for item in value]
    for item, item_t in pairs:
        why = mismatch(item, item_t, finite)
        if why:
            return f"{name} whose items are {why} ({item!r} is not)"
    return None


def _words(hint: Any) -> str:
    return mismatch(object(), hint) or "anything"


def _plain(hint: Any) -> tuple[type, ...]:
    """The classes a hint admits (for telling a nested dataclass section apart)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return tuple(c for arm in typing.get_args(hint) for c in _plain(arm))
    return (hint,) if isinstance(hint, type) else ()
