"""What a study's rows hold constant and where they differ.

A table compares its rows fairly only where they differ in the method alone. For each row this
module resolves every setting that changes numbers, as its runs will use it: the config's keys
(neutral ones left out), the method's knobs (``method.<knob>``), and what the method decides
unless told, the optimizer-state policy (``optimizer state``: keep or reset per round) and the
classifier (``classifier``: the class names' text features or a trained head). A setting's common
value is the one more than half of the rows that have it hold; a row's differences are the
settings where it holds another value, or any value where no value is common. A difference
outside the method's own knobs (``train.lr``, ``optimizer state``, ``classifier``, ...) confounds
the comparison: such a row is marked in the table (:data:`MARK`) and listed under it.

A study may declare what it holds constant (``holds_constant: [train.lr, optimizer state]`` in its
file); a row that differs there is refused when the study is read, naming the row and the value.
Settings a split sets are the same for every row of that split and are left out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fedmoap.errors import FedmoapError

__all__ = [
    "MARK",
    "RESOLVED",
    "RowSettings",
    "row_settings",
    "study_settings",
    "settings_of",
    "check_constant",
    "settings_lines",
]

MARK = "†"
"""Appended to a table row whose settings differ beyond its method's knobs."""
RESOLVED = ("optimizer state", "classifier")
"""Settings a method decides unless the config does, resolved per row."""
_LEFT_OUT = {"seed", "data.split_file", "method"}


@dataclass
class RowSettings:
    """Each row's resolved settings and how they compare across the study."""

    rows: dict[str, dict[str, Any]]
    """Row label -> setting -> value."""
    common: dict[str, Any]
    """Setting -> the value more than half of the rows having it hold (absent: no such value)."""
    differs: dict[str, dict[str, Any]]
    """Row label -> the settings where it holds another value than the common one."""

    def beyond_method(self, label: str) -> list[str]:
        """The settings where row ``label`` differs outside its method's own knobs."""
        return [k for k in self.differs[label] if not k.startswith("method.")]

    def marks(self) -> dict[str, str]:
        """Row label -> :data:`MARK` for every row that differs beyond its method's knobs."""
        return {label: MARK for label in self.rows if self.beyond_method(label)}


def row_settings(cfg: Any, split_keys: set[str]) -> dict[str, Any]:
    """One run config's settings that change numbers, flat, with the method's resolved defaults;
    ``split_keys``: the keys a split sets (left out)."""
    from fedmoap.config.sections import neutral_keys
    from fedmoap.federation.config import config_dict
    from fedmoap.run.runs import flatten

    neutral = {f"{s}.{k}" for s, k in neutral_keys()}
    flat = flatten(config_dict(cfg))
    out = {k: v for k, v in flat.items() if k not in neutral and k not in _LEFT_OUT and k not in split_keys}
    method = type(cfg.method)
    policy = out.pop("train.optimizer_state", None)
    out["optimizer state"] = policy or ("keep" if method.keep_optimizer_state else "reset")
    out["classifier"] = method.classifier
    return out


def study_settings(study, out: Any = None) -> RowSettings:
    """The settings of every row of ``study`` (from its first planned cell), the common ones and
    each row's differences."""
    return settings_of(study, study.cells(out))


def settings_of(study, cells: list) -> RowSettings:
    """:func:`study_settings` from the study's planned ``cells``."""
    split_keys = {k for overrides in study.splits.values() for k in overrides}
    rows: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if cell.variant.label not in rows:
            rows[cell.variant.label] = row_settings(cell.cfg, split_keys)
    keys = list(dict.fromkeys(k for settings in rows.values() for k in settings))
    common: dict[str, Any] = {}
    for key in keys:
        held = [s[key] for s in rows.values() if key in s]
        value, n = Counter(repr(v) for v in held).most_common(1)[0]
        if 2 * n > len(held):  # a strict majority; otherwise every row lists its own value
            common[key] = next(v for v in held if repr(v) == value)
    differs = {
        label: {k: v for k, v in settings.items() if k not in common or repr(v) != repr(common[k])}
        for label, settings in rows.items()
    }
    return RowSettings(rows, common, differs)


def check_constant(study, settings: RowSettings) -> None:
    """Refuse a study whose rows differ in a setting it declares constant."""
    for key in study.holds_constant:
        values = {label: s.get(key) for label, s in settings.rows.items()}
        if len({repr(v) for v in values.values()}) > 1:
            odd = [f"{label!r}: {v}" for label, v in values.items() if repr(v) != repr(settings.common.get(key))]
            raise FedmoapError(
                f"{study.path}: holds_constant: {key} is {settings.common.get(key)} in most rows but {'; '.join(odd)}"
            )


def settings_lines(settings: RowSettings) -> list[str]:
    """The rows' differences as lines for ``sweep --list`` and under a study's table."""

    def show(value: Any) -> str:
        return value if isinstance(value, str) else repr(value)

    lines = [
        "Settings every row shares unless listed: "
        + ", ".join(f"{k} {show(settings.common[k])}" for k in RESOLVED if k in settings.common)
        + "; each row's other settings:"
    ]
    for label, diff in settings.differs.items():
        mark = f" {MARK}" if settings.beyond_method(label) else ""
        shown = ", ".join(f"{k} {show(v)}" for k, v in diff.items()) or "none"
        lines.append(f"- {label}{mark}: {shown}")
    if settings.marks():
        lines.append(f"{MARK}: differs from the other rows beyond its method's own knobs (not the method alone).")
    return lines
