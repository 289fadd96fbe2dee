"""Every setting's value is checked against its declared type, for every config section and every
knob of every registered method (so a knob added later is covered without a new check)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal, Union

import pytest

from fedmoap.config.typecheck import mismatch, type_problems
from fedmoap.federation.config import RunConfig
from fedmoap.methods import registry

WRONG = {int: [4.0, True, "4"], float: ["abc", float("inf"), float("nan"), True], bool: [1, "yes"], str: [3]}
"""Values that must not pass for a plain annotation."""


def wrong_values(hint) -> list:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return ["no-such-choice"]
    if origin in (Union, types.UnionType):
        out = [v for arm in args for v in wrong_values(arm)]
        return [v for v in out if mismatch(v, hint) is not None]
    if origin in (list, dict):
        return ["not a container", 3]
    return WRONG.get(hint, [])


def every_setting():
    """(key, owner, field name, annotation) of every section field and every method knob."""
    cfg = RunConfig()
    for f in dataclasses.fields(RunConfig):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section) and f.name != "method":
            hints = typing.get_type_hints(type(section))
            for g in dataclasses.fields(section):
                yield f"{f.name}.{g.name}", type(section), g.name, hints[g.name]
        elif f.name != "method":
            yield f.name, RunConfig, f.name, typing.get_type_hints(RunConfig)[f.name]
    for cls in registry().values():
        hints = typing.get_type_hints(cls)
        for g in dataclasses.fields(cls):
            yield f"method.{g.name}", cls, g.name, hints[g.name]


SETTINGS = list(every_setting())


def test_defaults_pass():
    assert type_problems(RunConfig()) == []
    for cls in registry().values():
        assert type_problems(RunConfig(method=cls())) == [], cls


@pytest.mark.parametrize("key,owner,name,hint", SETTINGS, ids=[f"{o.__name__}.{n}" for _, o, n, _ in SETTINGS])
def test_a_wrong_value_is_refused_naming_its_key(key, owner, name, hint):
    values = wrong_values(hint)
    assert values, f"{key}: no wrong value known for {hint} (extend WRONG)"
    for value in values:
        cfg = RunConfig(method=owner()) if key.startswith("method.") else RunConfig()
        target = cfg.method if key.startswith("method.") else (getattr(cfg, key.split(".")[0]) if "." in key else cfg)
        setattr(target, name, value)
        problems = type_problems(cfg)
        assert len(problems) == 1 and problems[0].startswith(f"{key} must be"), (value, problems)


def test_every_float_setting_is_checked_for_finiteness():
    """No float setting declares that infinity is meaningful (``typecheck.NONFINITE``) today."""
    floats = [(key, owner, name) for key, owner, name, hint in SETTINGS if float in (hint, *typing.get_args(hint))]
    assert len(floats) > 20
    for key, owner, name in floats:
        field = {f.name: f for f in dataclasses.fields(owner)}[name]
        assert not field.metadata.get("nonfinite"), key


def test_every_method_knob_is_validated_by_the_parser(capsys):
    """The parser itself checks each knob (none shown as ``Unvalidated<...>`` in its help)."""
    from fedmoap.run.cli import main

    for name in registry():
        with pytest.raises(SystemExit):
            main(["fit", "--method.help", name])
        out = capsys.readouterr().out
        assert "--method." in out and "Unvalidated" not in out, name
