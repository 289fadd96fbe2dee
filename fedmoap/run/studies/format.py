"""Studies: a named grid of ``fedmoap fit`` runs (variants x splits x seeds) in one YAML file.

A study is the whole of an evidence table: which runs it needs and how they are laid out.
``configs/studies/<name>.yaml``::

    name: offline_default            # the study's name (OUT/<name>.md, OUT/<name>.json)
    description: what the table shows
    base:                            # overrides of every run (dotted `fedmoap fit` keys)
      config: configs/paper/x.yaml   #   `config` means --config (a path from the current directory)
      data.num_clients: 5
      fabric.threads: 1
    splits:                          # column groups, each a mapping of overrides
      dirichlet: {data.partition: dirichlet, data.alpha: 0.5}
    seeds: [0, 1, 2]
    variants:                        # the table's rows, in order: label -> variant
      "PromptFL":
        key: promptfl                #   its run directories' name
        config: configs/paper/methods/promptfl.yaml   # optional --config of the variant
        overrides: {method.n_ctx: 8} #   optional
        seeds: [0]                   #   optional: fewer seeds than the study's
        splits: [dirichlet]          #   optional: fewer splits than the study's
    table:                           # optional
      metrics: [final, last5]        #   columns per split (fedmoap.run.report.METRICS)
      splits: [dirichlet]            #   which splits are columns, in order
    holds_constant: [optimizer state, train.lr]   # optional: every row must share these

A value is written as in YAML (``method.lam: 0``, ``eval.modes: [local, base2novel]``) and a
run's arguments are ``--config BASE --KEY VALUE ... (split) --config VARIANT (overrides) --seed
S``, parsed exactly as ``fedmoap fit`` parses them. The run directory of a cell is
``OUT/<split>/seed<seed>/<variant key>`` (OUT: ``runs/studies/<name>`` unless given). Each
(split, seed) shares one data split: the first variant that runs there writes ``split.json``,
every other variant reads it (``data.split_file``). A cell is finished when its ``results.json``
holds its planned rounds.

A bad study (an unknown key, a value ``fedmoap fit`` refuses, a config file that is missing) is
refused in one line naming the file and the key, before anything is written.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmoap.config import yamlfile
from fedmoap.errors import FedmoapError

__all__ = [
    "STUDY_KEYS",
    "VARIANT_KEYS",
    "TABLE_KEYS",
    "SET_BY_STUDY",
    "KEY",
    "Variant",
    "Cell",
    "Study",
    "to_args",
    "load_study",
]

STUDY_KEYS = ("name", "description", "base", "splits", "seeds", "variants", "table", "holds_constant")
VARIANT_KEYS = ("key", "config", "overrides", "seeds", "splits")
TABLE_KEYS = ("metrics", "splits")
SET_BY_STUDY = ("seed", "run_dir", "progress")
"""Keys a study sets itself (per cell) or that do not belong to a run's config."""
_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
KEY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
"""A dotted config key (``fed.rounds``, ``method.lam``), as overrides and grid entries name them."""


@dataclass
class Variant:
    """One row of the study: a label, a directory name and its overrides."""

    label: str
    key: str
    config: str | None
    overrides: dict[str, Any]
    seeds: list[int]
    splits: list[str]


@dataclass
class Cell:
    """One run of a study: (split, seed, variant), its ``fedmoap fit`` arguments and directory."""

    split: str
    seed: int
    variant: Variant
    run_dir: Path
    args: list[str]
    """``fedmoap fit`` arguments, without ``fit`` and ``--run_dir``."""
    rounds: int
    """The planned number of rounds (``fed.rounds``)."""
    digest: str
    """The config digest (:func:`fedmoap.config.digest.config_digest`), as ``results.json`` records it."""
    writes_split: bool
    """True for the cell that makes its (split, seed)'s ``split.json``."""
    cfg: Any = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return f"{self.split}/seed{self.seed}/{self.variant.key}"


@dataclass
class Study:
    """A study, checked: a study file (:func:`load_study`) or a grid (:func:`fedmoap.run.studies.grid.grid_study`)."""

    path: Path
    name: str
    description: str
    base: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    seeds: list[int]
    variants: list[Variant]
    metrics: list[str]
    table_splits: list[str]
    out: Path | None = None
    """Where its cells go unless told otherwise (``runs/studies/<name>`` if None)."""
    holds_constant: list[str] = field(default_factory=list)
    """Settings every row must share (:mod:`fedmoap.run.studies.settings`), checked with the cells."""

    def default_out(self) -> Path:
        return self.out if self.out is not None else Path("runs") / "studies" / self.name

    def variant(self, name: str) -> Variant:
        """The variant with this label or key."""
        for v in self.variants:
            if name in (v.label, v.key):
                return v
        raise FedmoapError(f"{self.path}: no variant {name!r} (variants: {', '.join(v.key for v in self.variants)})")

    def cells(self, out: str | Path | None = None, extra: dict[str, Any] | None = None) -> list[Cell]:
        """Every cell in run order (split, then seed, then variant), each parsed and validated as
        ``fedmoap fit`` would; ``extra``: overrides of every run after the study's own
        (:func:`fedmoap.run.studies.execution.check_extra` keeps them to settings that do not change numbers)."""
        from fedmoap.config.digest import config_digest
        from fedmoap.federation.config import config_dict
        from fedmoap.run.validate import validate

        out = Path(out) if out is not None else self.default_out()
        extra_args = to_args(extra or {})
        self._parse(to_args(self.base), "base")
        for s, overrides in self.splits.items():
            self._parse(to_args(self.base) + to_args(overrides), f"splits.{s}")
        cells = []
        parsed: dict[tuple[str, str], Any] = {}
        for split, split_overrides in self.splits.items():
            for seed in self.seeds:
                writer = None
                for v in self.variants:
                    if seed not in v.seeds or split not in v.splits:
                        continue
                    run_dir = out / split / f"seed{seed}" / v.key
                    shares = not any("data.split_file" in m for m in (self.base, split_overrides, v.overrides))
                    common = (
                        to_args(self.base)
                        + to_args(split_overrides)
                        + (["--config", v.config] if v.config else [])
                        + to_args(v.overrides)
                        + extra_args
                    )
                    split_file = str(writer / "split.json") if shares and writer is not None else None
                    args = common + ["--seed", str(seed)] + (["--data.split_file", split_file] if split_file else [])
                    where = f"variants.{v.label} (split {split}, seed {seed})"
                    # parsed once per (split, variant): the seed and the split file are plain values
                    if (split, v.key) not in parsed:
                        parsed[split, v.key] = self._parse(common, f"variants.{v.label} (split {split})")
                    cfg = copy.deepcopy(parsed[split, v.key])
                    cfg.seed = seed
                    cfg.data.split_file = split_file or cfg.data.split_file
                    try:
                        validate(cfg)
                    except FedmoapError as exc:
                        raise FedmoapError(f"{self.path}: {where}: {exc}") from None
                    cells.append(
                        Cell(
                            split,
                            seed,
                            v,
                            run_dir,
                            args,
                            cfg.fed.rounds,
                            config_digest(config_dict(cfg)),
                            shares and writer is None,
                            cfg,
                        )
                    )
                    if shares and writer is None:
                        writer = run_dir
        if self.holds_constant:
            from fedmoap.run.studies.settings import check_constant, settings_of

            check_constant(self, settings_of(self, cells))
        return cells

    def _parse(self, args: list[str], where: str) -> Any:
        from fedmoap.run.parse import parse_fit

        try:
            return parse_fit(["fit", *args])[0]
        except FedmoapError as exc:
            raise FedmoapError(f"{self.path}: {where}: {exc}") from None


def to_args(overrides: dict[str, Any]) -> list[str]:
    """``{"method": "pfedmoap", "method.lam": 0}`` -> ``["--method", "pfedmoap", "--method.lam",
    "0"]``: ``config`` first (it is ``--config``), then ``method`` (its knobs follow it), then
    the rest in the file's order."""
    order = {"config": 0, "method": 1}
    args: list[str] = []
    for key, value in sorted(overrides.items(), key=lambda kv: order.get(kv[0], 2)):
        args += [f"--{key}", _text(value)]
    return args


def _text(value: Any) -> str:
    """A YAML value as the command line writes it (jsonargparse reads it back as YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def load_study(path: str | Path) -> Study:
    """Read and check a study file (its shape; :meth:`Study.cells` checks every run's arguments)."""
    path = Path(path)

    def bad(key: str, problem: str) -> FedmoapError:
        return FedmoapError(f"{path}: {key}: {problem}")

    data = yamlfile.read_limited(path, "study")
    try:
        raw = yamlfile.load(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise FedmoapError(f"study {path} is not a text (YAML) file") from None
    except yamlfile.DuplicateKeyError as exc:
        raise FedmoapError(f"study {path}: {exc.problem}") from None
    except Exception as exc:  # yaml.YAMLError and its kin: the parser's message names the line
        raise FedmoapError(f"study {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise FedmoapError(f"study {path} is not a mapping (name, base, splits, seeds, variants)")
    for key in raw:
        if key not in STUDY_KEYS:
            raise bad(str(key), f"unknown key (a study has {', '.join(STUDY_KEYS)})")
    for key in ("name", "splits", "seeds", "variants"):
        if key not in raw:
            raise bad(key, "missing")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise bad("name", f"{name!r} is not a name (letters, digits, '.', '_', '-')")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise bad("description", "not a text")
    base = _overrides(raw.get("base") or {}, "base", bad)
    splits = raw["splits"]
    if not isinstance(splits, dict) or not splits:
        raise bad("splits", "not a non-empty mapping of split name -> overrides")
    splits = {_dirname(s, "splits", bad): _overrides(o or {}, f"splits.{s}", bad) for s, o in splits.items()}
    seeds = _seeds(raw["seeds"], "seeds", bad, None)
    variants_raw = raw["variants"]
    if not isinstance(variants_raw, dict) or not variants_raw:
        raise bad("variants", "not a non-empty mapping of label -> {key, config, overrides, seeds}")
    variants, keys = [], set()
    for label, spec in variants_raw.items():
        where = f"variants.{label}"
        if not isinstance(spec, dict):
            raise bad(where, "not a mapping with key, config, overrides, seeds")
        for k in spec:
            if k not in VARIANT_KEYS:
                raise bad(f"{where}.{k}", f"unknown key (a variant has {', '.join(VARIANT_KEYS)})")
        if "key" not in spec:
            raise bad(f"{where}.key", "missing (the variant's run directory name)")
        key = _dirname(spec["key"], f"{where}.key", bad)
        if key in keys:
            raise bad(f"{where}.key", f"{key!r} is the key of an earlier variant too")
        keys.add(key)
        config = spec.get("config")
        if config is not None and (not isinstance(config, str) or not Path(config).is_file()):
            raise bad(f"{where}.config", f"{config!r} is not a file (paths are from the current directory)")
        v_splits = spec.get("splits", list(splits))
        if not isinstance(v_splits, list) or not v_splits or any(s not in splits for s in v_splits):
            raise bad(f"{where}.splits", f"{v_splits!r} is not a list of the study's splits ({', '.join(splits)})")
        variants.append(
            Variant(
                str(label),
                key,
                config,
                _overrides(spec.get("overrides") or {}, f"{where}.overrides", bad),
                _seeds(spec.get("seeds", seeds), f"{where}.seeds", bad, seeds),
                v_splits,
            )
        )
    if isinstance(base.get("config"), str) and not Path(base["config"]).is_file():
        raise bad("base.config", f"{base['config']!r} is not a file (paths are from the current directory)")
    metrics, table_splits = _table(raw.get("table") or {}, list(splits), bad)
    held = raw.get("holds_constant") or []
    if not isinstance(held, list) or not all(isinstance(k, str) and k for k in held):
        raise bad("holds_constant", "not a list of settings (e.g. [train.lr, optimizer state])")
    return Study(path, name, description, base, splits, seeds, variants, metrics, table_splits, holds_constant=held)


def _overrides(value: Any, where: str, bad) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(where, "not a mapping of dotted config keys -> values")
    for key in value:
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise bad(f"{where}.{key}", "not a dotted config key (e.g. fed.rounds, method.lam)")
        if key in SET_BY_STUDY:
            raise bad(f"{where}.{key}", "set by the study itself (seeds:, the run directory)")
    return dict(value)


def _dirname(value: Any, where: str, bad) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise bad(where, f"{value!r} is not a directory name (letters, digits, '.', '_', '-')")
    return value


def _seeds(value: Any, where: str, bad, allowed: list[int] | None) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or len(set(value)) < len(value)
        or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**63 for s in value)
    ):
        raise bad(where, f"{value!r} is not a list of distinct seeds (integers >= 0)")
    if allowed is not None and any(s not in allowed for s in value):
        raise bad(where, f"{value!r} holds seeds the study does not run ({allowed})")
    return list(value)


def _table(value: Any, splits: list[str], bad) -> tuple[list[str], list[str]]:
    from fedmoap.run.report import METRICS

    if not isinstance(value, dict):
        raise bad("table", "not a mapping with metrics, splits")
    for k in value:
        if k not in TABLE_KEYS:
            raise bad(f"table.{k}", f"unknown key (a table has {', '.join(TABLE_KEYS)})")
    metrics = value.get("metrics", ["final", "last5"])
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise bad("table.metrics", f"{metrics!r} is not a list of {', '.join(METRICS)}")
    shown = value.get("splits", splits)
    if not isinstance(shown, list) or not shown or any(s not in splits for s in shown):
        raise bad("table.splits", f"{shown!r} is not a list of the study's splits ({', '.join(splits)})")
    return list(metrics), list(shown)
