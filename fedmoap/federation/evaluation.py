"""Evaluation modes beyond each client's own test set (``eval.modes``; spec section 4.3).

- ``local``: each training client on its own test set (the test set follows its training mix);
  always evaluated, by :meth:`fedmoap.federation.rounds.Federation.evaluate` (the record's own keys).
- ``global``: each client's evaluation model on the whole test set with all class names (for
  a method evaluated with the server's state alone, the same number for every client).
- ``neighbor``: each client on the union of the *other* clients' test sets (DP-FPL's
  "neighbor": generalisation to what the others hold).
- ``base2novel`` (CoOp's convention): classes in label-index order, the first
  ceil(base_fraction x C) are *base*, the rest *novel*; the partition and k-shot sampling see
  base-class samples only, and the client modules' label space is the base classes. Each client
  is evaluated on local (its own test set: base classes following its training mix), base (all
  base-class test images, base class names as the label space) and novel (all novel-class test
  images, novel class names as the label space, renumbered from 0): two separate label spaces,
  not a joint one. HM(base, novel) and HM(local, base, novel) per client and averaged.
- ``unseen_clients``: a seeded fraction of the clients never trains. Each is evaluated (a) as a
  never-trained client (``load_client(cid, None)`` +
  :meth:`~fedmoap.methods.base.ClientModule.prepare_unseen`: the method's global component, e.g.
  the FedAvg prompt; pFedMoAP's global prompt without experts; FedAMP's mean of the clients'
  prompts) and (b) after the method's first-time-participant procedure
  (:meth:`~fedmoap.methods.base.ClientModule.adapt_unseen`) with ``adaptation_epochs`` epochs of
  local training on its own training split (:meth:`~fedmoap.federation.rounds.Federation.adapt`:
  fresh optimizer, random stream (seed, "adapt", t, cid); pFedMoAP trains twice, see
  :mod:`fedmoap.methods.pfedmoap`); nothing of it is stored, uploaded or seen by the server.

- ``xdomain``, ``lodo``, ``xdataset``: the generalisation protocols over the domains of
  ``data.domain_column`` (:mod:`fedmoap.federation.protocols`).

What a mode needs of the split is stored in ``split.json`` (``classes``, ``unseen_clients``,
``eval_sets``, ``domains``) so every method of a comparison uses the same classes, clients and
test images.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from fedmoap.config.sections import DataArgs, EvalArgs, EvalMode
from fedmoap.data.sources import SourceData
from fedmoap.data.split import ClientSplit
from fedmoap.errors import FedmoapError
from fedmoap.federation import protocols
from fedmoap.federation.config import RunConfig
from fedmoap.federation.local import evaluate
from fedmoap.federation.results import accuracy_entry, base2novel_entry, unseen_entry
from fedmoap.methods.base import HeldOut
from fedmoap.seeding import numpy_rng

if TYPE_CHECKING:
    from fedmoap.federation.rounds import Federation
    from fedmoap.inputs.federated_data import FederatedData


__all__ = [
    "MODES",
    "POOLED",
    "num_held_out",
    "problems",
    "ClassSplit",
    "class_split",
    "train_classes",
    "complete_split",
    "apply_class_order",
    "ModeEvaluator",
    "peer_mean",
    "mean_params",
]

MODES: tuple[str, ...] = get_args(EvalMode)
POOLED = {"global": ("global",), "base2novel": ("base", "novel")}
"""Mode -> the pooled test sets it needs (stored in split.json's ``eval_sets``)."""


def num_held_out(num_clients: int, fraction: float) -> int:
    """Held-out clients: ``fraction`` x N rounded half up, at least 1."""
    return max(1, math.floor(fraction * num_clients + 0.5))


def problems(e: EvalArgs, data: DataArgs) -> list[str]:
    """Range and combination checks of the ``eval`` section, with the ``data`` section it reads
    (run before anything is built)."""
    out = []
    modes = set(e.modes)
    if not 0 < e.base_fraction < 1:
        out.append("eval.base_fraction must be in (0, 1)")
    if not 0 < e.unseen_fraction < 1:
        out.append("eval.unseen_fraction must be in (0, 1)")
    elif "unseen_clients" in modes and num_held_out(data.num_clients, e.unseen_fraction) >= data.num_clients:
        out.append(
            f"eval.unseen_fraction {e.unseen_fraction} holds out all {data.num_clients} "
            "clients (data.num_clients); at least one must train"
        )
    if e.adaptation_epochs is not None and e.adaptation_epochs < 0:
        out.append("eval.adaptation_epochs must be >= 0 or null")
    if e.max_test_images is not None and e.max_test_images < 1:
        out.append("eval.max_test_images must be >= 1 or null")
    if e.clients_per_round is not None and e.clients_per_round < 1:
        out.append("eval.clients_per_round must be >= 1 or null")
    return out + protocols.problems(e, data)


@dataclass
class ClassSplit:
    """Base and novel classes (label indices) of base-to-novel evaluation."""

    names: list[str]
    """All class names, in label order."""
    base: list[int]
    novel: list[int]

    @property
    def order(self) -> list[int]:
        """Label indices in the run's label space: base first, then novel."""
        return self.base + self.novel

    def names_of(self, labels: list[int]) -> list[str]:
        return [self.names[c] for c in labels]

    def to_json(self) -> dict:
        return {
            "rule": "label order; first ceil(base_fraction x C) are base",
            "names": self.names,
            "base": self.base,
            "novel": self.novel,
        }


def class_split(classnames: list[str], fraction: float) -> ClassSplit:
    """CoOp's base/novel split: label order, the first ceil(fraction x C) classes are base."""
    c = len(classnames)
    b = math.ceil(fraction * c - 1e-9)
    if not 1 <= b < c:
        raise FedmoapError(
            f"eval.base_fraction {fraction} gives {b} base classes of {c}; base and "
            "novel classes must both be non-empty"
        )
    return ClassSplit(list(classnames), list(range(b)), list(range(b, c)))


def train_classes(e: EvalArgs, source: SourceData) -> ClassSplit | None:
    """The class split if ``base2novel`` or ``xdataset`` is on (the partition then sees only its
    base classes)."""
    return class_split(source.classnames, e.base_fraction) if {"base2novel", "xdataset"} & set(e.modes) else None


def complete_split(split: ClientSplit, cfg: RunConfig, source: SourceData, classes: ClassSplit | None) -> ClientSplit:
    """Check a split (new, loaded from ``data.split_file`` or resumed) against the modes and add
    what they need to ``split.extra``: the class split, the held-out clients (drawn from the run
    seed where the file has none), the pooled test sets (kept from the file where present)."""
    e, where = cfg.eval, cfg.data.split_file or "split.json"
    extra = split.extra
    if classes is not None:
        stored = extra.get("classes")
        if stored is not None and (stored.get("base"), stored.get("novel")) != (classes.base, classes.novel):
            raise FedmoapError(
                f"data.split_file: {where} has base classes {stored.get('base')}, "
                f"eval.base_fraction {e.base_fraction} gives {classes.base}"
            )
        novel = np.asarray(classes.novel)
        leaking = [i for i, rows in enumerate(split.train) if np.isin(source.train_labels[rows], novel).any()]
        if leaking:
            raise FedmoapError(
                f"data.split_file: in {where} clients {leaking} train on novel classes; "
                "eval.modes base2novel needs a split made with base2novel"
            )
        extra["classes"] = classes.to_json()
    elif "classes" in extra:
        raise FedmoapError(
            f"data.split_file: {where} was made for eval.modes base2novel (clients "
            "train on base classes only); add base2novel to eval.modes or use another split"
        )
    if "unseen_clients" in e.modes:
        k = num_held_out(split.num_clients, e.unseen_fraction)
        held = extra.get("unseen_clients")
        if held is None:
            held = sorted(
                int(c) for c in numpy_rng(cfg.seed, "unseen_clients").choice(split.num_clients, k, replace=False)
            )
        elif len(held) != k or not all(0 <= int(c) < split.num_clients for c in held):
            raise FedmoapError(
                f"data.split_file: {where} holds out clients {held}, eval.unseen_fraction "
                f"{e.unseen_fraction} asks for {k} of {split.num_clients}"
            )
        extra["unseen_clients"] = sorted(int(c) for c in held)
    else:
        extra.pop("unseen_clients", None)
    stored_sets = extra.get("eval_sets", {})
    sets = {}
    for mode in MODES:
        for name in POOLED.get(mode, ()) if mode in e.modes else ():
            if name in stored_sets:
                sets[name] = [int(r) for r in stored_sets[name]]
                continue
            labels = source.test_labels
            if name == "global":
                rows = np.arange(len(labels))
            else:
                rows = np.flatnonzero(np.isin(labels, getattr(classes, name)))
            if e.max_test_images is not None and len(rows) > e.max_test_images:
                rows = np.sort(numpy_rng(cfg.seed, "eval_sets", name).permutation(rows)[: e.max_test_images])
            sets[name] = rows.tolist()
    sets.update(protocols.complete_split(split, cfg, source, classes, stored_sets))
    n_test = len(source.test_labels)
    for name, rows in sets.items():
        if not rows or min(rows) < 0 or max(rows) >= n_test:
            raise FedmoapError(
                f"data.split_file: {where}'s eval_sets.{name} is empty or indexes test "
                f"samples beyond the {n_test} of this dataset"
            )
    if sets:
        extra["eval_sets"] = sets
    else:
        extra.pop("eval_sets", None)
    return split


def apply_class_order(data: FederatedData, classes: ClassSplit) -> None:
    """Renumber every label into the base-then-novel order (base classes 0..B-1, the client
    modules' label space; novel B..C-1)."""
    remap = torch.empty(len(classes.names), dtype=torch.long)
    remap[torch.tensor(classes.order)] = torch.arange(len(classes.order))
    data.train.labels = remap[data.train.labels]
    data.test.labels = remap[data.test.labels]
    data.classnames = classes.names_of(classes.order)


class ModeEvaluator:
    """Evaluates the modes other than ``local`` after each evaluated round (see the module
    docstring); :class:`~fedmoap.federation.rounds.Federation` calls it with the round's local counts and
    adds its entries to the round record (:mod:`fedmoap.federation.results`)."""

    def __init__(self, e: EvalArgs, classes: ClassSplit | None, held_out: list[int], local_epochs: int) -> None:
        self.modes = set(e.modes)
        self.classes = classes
        self.held_out = sorted(held_out)
        self.adaptation_epochs = local_epochs if e.adaptation_epochs is None else e.adaptation_epochs

    def __call__(
        self, fed: Federation, t: int, local: dict[int, tuple[int, int]], progress: bool = False
    ) -> dict[str, Any]:
        comm, out = fed.comm, {}
        if self.modes & {"global", "neighbor", "base2novel"}:
            mine = comm.shard(fed.schedule.evaluated(t))
            counts = comm.gather_dicts(self.trained(fed, mine, t, progress))
            for mode in ("global", "neighbor"):
                if mode in self.modes:
                    out[mode] = accuracy_entry({c: counts[c][mode] for c in sorted(counts)})
            if "base2novel" in self.modes:
                out["base2novel"] = base2novel_entry(
                    local, {c: counts[c]["base"] for c in counts}, {c: counts[c]["novel"] for c in counts}
                )
        if "unseen_clients" in self.modes:
            counts = comm.gather_dicts(self.unseen(fed, comm.shard(self.held_out), t, progress))
            plain = {c: counts[c]["plain"] for c in sorted(counts)}
            adapted = {c: counts[c]["adapted"] for c in sorted(counts)} if self.adaptation_epochs else None
            out["unseen_clients"] = unseen_entry(self.held_out, self.adaptation_epochs, plain, adapted)
        if self.modes & set(protocols.PROTOCOLS):
            out.update(protocols.evaluate(fed, self.modes, self.classes, t, progress, peer_mean(fed)))
        return out

    # ---------------------------------------------------------------------------------------
    def trained(
        self, fed: Federation, clients: list[int], t: int, progress: bool
    ) -> dict[int, dict[str, tuple[int, int]]]:
        """global / neighbor / base / novel (correct, n) of each training client in ``clients``,
        each with the model it is evaluated with (the one :meth:`Federation.evaluate` uses)."""
        module, data, bs = fed.module, fed.data, fed.schedule.eval_batch_size
        shared = not module.personal_eval
        train_names = list(module.classnames)
        out: dict[int, dict[str, tuple[int, int]]] = {}
        same: dict[str, tuple[int, int]] | None = None  # shared methods: client-independent numbers
        try:
            for cid in tqdm(clients, desc=f"round {t} eval modes", leave=False, disable=not progress):
                if same is None:
                    module.load_client(cid, None if shared else fed.store.get(cid))
                    module.prepare_eval(fed.server.eval_payload(cid))
                    fed.adapt(cid, t)
                    self._begin(fed, train_names)
                res: dict[str, tuple[int, int]] = {}
                if "neighbor" in self.modes:
                    others = [data.test_pos[j] for j in fed.schedule.clients if j != cid]
                    rows = torch.cat(others) if others else torch.zeros(0, dtype=torch.long)
                    res["neighbor"] = evaluate(module, data.rows_batches(rows, bs), fed.fabric)
                if same is not None:
                    out[cid] = {**res, **same}
                    continue
                own: dict[str, tuple[int, int]] = {}
                if "base2novel" in self.modes:
                    own["base"] = evaluate(module, data.rows_batches(data.eval_pos["base"], bs), fed.fabric)
                    b = len(self.classes.base)
                    relabel = torch.arange(len(self.classes.names)) - b  # novel b.. -> 0..
                    self._begin(fed, self.classes.names_of(self.classes.novel))
                    own["novel"] = evaluate(module, data.rows_batches(data.eval_pos["novel"], bs, relabel), fed.fabric)
                if "global" in self.modes:
                    if self.classes is not None:  # all classes, in the run's base-then-novel order
                        self._begin(fed, self.classes.names_of(self.classes.order))
                    own["global"] = evaluate(module, data.rows_batches(data.eval_pos["global"], bs), fed.fabric)
                if shared:  # later clients reuse this set-up for neighbor: the training names
                    same = own
                    if list(module.classnames) != train_names:
                        self._begin(fed, train_names)
                out[cid] = {**res, **own}
        finally:
            if list(module.classnames) != train_names:
                module.set_classnames(train_names)
        return out

    def unseen(
        self, fed: Federation, clients: list[int], t: int, progress: bool
    ) -> dict[int, dict[str, tuple[int, int]]]:
        """Each held-out client on its own test set, as a never-trained client and after
        few-shot adaptation (nothing stored, uploaded or aggregated)."""
        module, bs, out = fed.module, fed.schedule.eval_batch_size, {}
        peers = peer_mean(fed)
        for cid in tqdm(clients, desc=f"round {t} unseen clients", leave=False, disable=not progress):
            held = HeldOut(
                cid,
                self.adaptation_epochs,
                download=lambda up, cid=cid: fed.server.unseen_payload(cid, up),
                train=lambda n, stream, cid=cid: fed.adapt(cid, t, n, stream),
                train_labels=fed.data.train_labels(cid),
                peer_mean=peers,
            )
            res = {}
            for part in ("plain", "adapted") if self.adaptation_epochs else ("plain",):
                module.load_client(cid, None)
                if part == "plain":
                    module.prepare_unseen(held)
                else:
                    module.adapt_unseen(held)
                with fed.fabric.autocast():
                    module.begin_eval()
                res[part] = evaluate(module, fed.data.test_batches(cid, bs), fed.fabric)
            out[cid] = res
        return out

    @staticmethod
    def _begin(fed: Federation, names: list[str]) -> None:
        """Evaluation state for the label space ``names``."""
        if list(fed.module.classnames) != list(names):
            fed.module.set_classnames(names)
        with fed.fabric.autocast():
            fed.module.begin_eval()


def peer_mean(fed: Federation) -> Callable[[], dict[str, torch.Tensor] | None]:
    """:attr:`HeldOut.peer_mean`: the training clients' mean kept parameters, computed once."""
    # the clients' kept state is private: under DP no mechanism covers releasing its mean
    if fed.privacy is not None:
        return lambda: None
    return functools.cache(lambda: mean_params(fed.store.get(c) for c in fed.schedule.clients))


def mean_params(states: Iterable[dict | None]) -> dict[str, torch.Tensor] | None:
    """The unweighted mean (in float64, then the stored dtype) of the parameters of the kept
    client states; None if none keeps a parameter."""
    sums: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    n = 0
    for state in states:
        if state is None or not state["params"]:
            continue
        n += 1
        for name, p in state["params"].items():
            sums[name] = sums.get(name, 0) + p.double()
            dtypes[name] = p.dtype
    return {k: (v / n).to(dtypes[k]) for k, v in sums.items()} if n else None
