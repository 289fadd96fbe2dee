"""The generalisation protocols of ``eval.modes``: ``xdomain`` (single source -> each target),
``lodo`` (leave one domain out) and ``xdataset`` (unseen domains with unseen classes).

Domains are the values of ``data.domain_column``. The clients train on the *source* domains only
(``eval.source_domains``): the partition and k-shot sampling never see another domain's samples,
and each client's own test set comes from its own domains. Every *target* domain
(``eval.target_domains``) has a pooled test set, stored in ``split.json`` (``eval_sets``
``domain:<name>``, all its test images; ``novel:<name>``, its novel-class ones; capped by
``eval.max_test_images``) with the protocol (``domains``), so every method sees the same.

- ``xdomain``: one source domain; each other domain is a target, scored on all classes.
- ``lodo``: one target domain, held out; the clients train on all the others. The mean over the
  held-out domains is over runs, one per domain (a sweep over ``eval.target_domains``).
- ``xdataset``: the stand-in of a new dataset, a new look *and* new classes: the clients train on
  the source domains' base classes (base2novel's class split, ``eval.base_fraction``); each target
  is scored on its novel-class images with the novel class names as the label space.

Each target is scored (a) ``global``: with the method's global component as a never-trained
client beyond the federation gets it (:meth:`~fedmoap.methods.base.ClientModule.prepare_unseen`,
the ``unseen_clients`` fallback: the FedAvg prompt, pFedMoAP's global prompt without experts,
FedAMP's mean prompt, ...) and (b) ``personal``: with each training client's own evaluation model
(the one ``local`` scores), averaged over clients. A method evaluated with the server's state
alone has one model, so (a) = (b). Results: per target and the mean over targets
(:func:`fedmoap.federation.results.protocol_entry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fedmoap.config.sections import DataArgs, EvalArgs
from fedmoap.data.sources import SourceData
from fedmoap.errors import FedmoapError
from fedmoap.federation.local import evaluate as count_correct
from fedmoap.federation.results import PROTOCOLS, protocol_entry
from fedmoap.methods.base import HeldOut
from fedmoap.seeding import numpy_rng

if TYPE_CHECKING:
    from fedmoap.data.split import ClientSplit
    from fedmoap.federation.config import RunConfig
    from fedmoap.federation.rounds import Federation


__all__ = ["problems", "DomainPlan", "domain_plan", "complete_split", "evaluate"]


def problems(e: EvalArgs, data: DataArgs) -> list[str]:
    """Combination checks of the protocols' settings in the ``eval`` section, with the ``data``
    section's domain column (before any data is read)."""
    out = []
    chosen = [m for m in PROTOCOLS if m in e.modes]
    src, tgt = e.source_domains, e.target_domains
    if not chosen:
        return [
            f"eval.{key} is set but eval.modes has no domain protocol ({', '.join(PROTOCOLS)})"
            for key, value in (("source_domains", src), ("target_domains", tgt))
            if value is not None
        ]
    if len(chosen) > 1:
        out.append(f"eval.modes: {' and '.join(chosen)} each fix what the clients train on; choose one per run")
    if not data.domain_column:
        out.append(f"eval.modes {chosen[0]} needs data.domain_column (the domains)")
    for key, value in (("source_domains", src), ("target_domains", tgt)):
        if value is not None and (not value or len(set(value)) != len(value)):
            out.append(f"eval.{key} must be a non-empty list of distinct domains")
    both = sorted(set(src or ()) & set(tgt or ()))
    if both:
        out.append(f"eval.target_domains {both} are also in eval.source_domains")
    if "xdomain" in chosen and (src is None or len(src) != 1):
        out.append("eval.modes xdomain needs eval.source_domains: [the single source domain]")
    if "lodo" in chosen:
        if tgt is None or len(tgt) != 1:
            out.append("eval.modes lodo needs eval.target_domains: [the held-out domain]")
        if src is not None:
            out.append("eval.source_domains: lodo trains on every domain but the held-out one; leave it null")
    if "xdataset" in chosen:
        if src is None and tgt is None:
            out.append("eval.modes xdataset needs eval.source_domains or eval.target_domains")
    return out


@dataclass
class DomainPlan:
    """The protocol of a run: which domains the clients train on and which are tested."""

    mode: str
    names: list[str]
    """Every domain, by code (``SourceData.domain_names``)."""
    source: list[str]
    target: list[str]

    @property
    def source_codes(self) -> list[int]:
        return [self.names.index(d) for d in self.source]

    def pool(self, domain: str) -> str:
        """The ``eval_sets`` name of a target's pooled test set."""
        return f"{'novel' if self.mode == 'xdataset' else 'domain'}:{domain}"

    def to_json(self) -> dict:
        return {"mode": self.mode, "source": self.source, "target": self.target}


def domain_plan(e: EvalArgs, source: SourceData) -> DomainPlan | None:
    """The run's :class:`DomainPlan` (None without a protocol): the configured domains checked
    against the dataset's, the unset side being every other domain."""
    mode = next((m for m in PROTOCOLS if m in e.modes), None)
    if mode is None:
        return None
    names = list(source.domain_names or [])
    for key, value in (("source_domains", e.source_domains), ("target_domains", e.target_domains)):
        unknown = [d for d in value or () if d not in names]
        if unknown:
            raise FedmoapError(
                f"eval.{key}: no domain {unknown[0]!r} in data.domain_column (its domains: {', '.join(names)})"
            )
    src = e.source_domains or [d for d in names if d not in (e.target_domains or ())]
    tgt = e.target_domains or [d for d in names if d not in src]
    if not src or not tgt:
        raise FedmoapError(
            f"eval.{'source' if not src else 'target'}_domains: eval.modes {mode} leaves no "
            f"{'source' if not src else 'target'} domain (the dataset's: {', '.join(names)})"
        )
    return DomainPlan(mode, names, list(src), list(tgt))


def complete_split(
    split: ClientSplit, cfg: RunConfig, source: SourceData, classes: Any, stored_sets: dict[str, list[int]]
) -> dict[str, list[int]]:
    """Check a split against the protocol (a stored one must have been made for it), record the
    protocol in ``split.extra`` and return the targets' pooled test sets (kept from
    ``stored_sets`` where present)."""
    plan, where = domain_plan(cfg.eval, source), cfg.data.split_file or "split.json"
    stored = split.extra.get("domains")
    if plan is None:
        if stored is not None:
            raise FedmoapError(
                f"data.split_file: {where} was made for eval.modes {stored.get('mode')} (clients "
                f"train on domains {stored.get('source')}); add it to eval.modes or use another split"
            )
        return {}
    if stored is not None and stored != plan.to_json():
        raise FedmoapError(
            f"data.split_file: {where} was made for {stored}, this run asks for {plan.to_json()} "
            "(eval.modes, eval.source_domains, eval.target_domains)"
        )
    allowed = plan.source_codes
    outside = [i for i, rows in enumerate(split.train) if not np.isin(source.train_domains[rows], allowed).all()]
    if outside:
        raise FedmoapError(
            f"data.split_file: in {where} clients {outside} train on domains outside "
            f"{plan.source} (eval.source_domains)"
        )
    split.extra["domains"] = plan.to_json()
    sets = {}
    for domain in plan.target:
        name = plan.pool(domain)
        if name in stored_sets:
            sets[name] = [int(r) for r in stored_sets[name]]
            continue
        keep = source.test_domains == plan.names.index(domain)
        if plan.mode == "xdataset":
            keep &= np.isin(source.test_labels, classes.novel)
        rows = np.flatnonzero(keep)
        if not len(rows):
            raise FedmoapError(
                f"eval.target_domains: domain {domain!r} has no test images"
                + (" of the novel classes" if plan.mode == "xdataset" else "")
            )
        cap = cfg.eval.max_test_images
        if cap is not None and len(rows) > cap:
            rows = np.sort(numpy_rng(cfg.seed, "eval_sets", name).permutation(rows)[:cap])
        sets[name] = rows.tolist()
    return sets


def _no_training(epochs: int, stream: str) -> None:
    raise RuntimeError("a target domain's client has no training data")


def evaluate(
    fed: Federation, modes: set[str], classes: Any, t: int, progress: bool, peer_mean: Callable[[], dict | None]
) -> dict[str, Any]:
    """The protocol's entry of round ``t``: every target's pooled test set scored with the global
    component and with each training client's model (module docstring). ``classes``: the class
    split (base2novel, xdataset) or None; ``peer_mean``: the training clients' mean parameters
    (:class:`~fedmoap.methods.base.HeldOut`)."""
    mode = next((m for m in PROTOCOLS if m in modes), None)
    prefix = "novel:" if mode == "xdataset" else "domain:"
    pools = {k[len(prefix) :]: pos for k, pos in fed.data.eval_pos.items() if k.startswith(prefix)}
    if mode is None or not pools:
        return {}
    module, comm, bs = fed.module, fed.comm, fed.schedule.eval_batch_size
    train_names = list(module.classnames)
    relabel = None
    if mode == "xdataset":  # novel classes b.. -> 0.., their names the label space
        names = classes.names_of(classes.novel)
        relabel = torch.arange(len(classes.names)) - len(classes.base)
    else:
        names = classes.names_of(classes.order) if classes is not None else train_names
    shared = not module.personal_eval
    outsider = fed.data.num_clients  # the global component: a client beyond the federation
    units = ["global"] + ([] if shared else list(fed.schedule.clients))
    counts: dict[Any, dict[str, tuple[int, int]]] = {}
    try:
        for unit in tqdm(comm.shard(units), desc=f"round {t} {mode}", leave=False, disable=not progress):
            if list(module.classnames) != train_names:
                module.set_classnames(train_names)
            if unit == "global":
                module.load_client(outsider, None)
                module.prepare_unseen(
                    HeldOut(
                        outsider,
                        0,
                        lambda up: fed.server.unseen_payload(outsider, up),
                        _no_training,
                        torch.zeros(0, dtype=torch.long),
                        peer_mean,
                    )
                )
            else:
                module.load_client(unit, fed.store.get(unit))
                module.prepare_eval(fed.server.eval_payload(unit))
                fed.adapt(unit, t)
            if list(module.classnames) != names:
                module.set_classnames(names)
            with fed.fabric.autocast():
                module.begin_eval()
            counts[unit] = {
                d: count_correct(module, fed.data.rows_batches(pos, bs, relabel), fed.fabric)
                for d, pos in pools.items()
            }
    finally:
        if list(module.classnames) != train_names:
            module.set_classnames(train_names)
    counts = comm.gather_dicts(counts)
    personal = {c: counts["global" if shared else c] for c in fed.schedule.clients}
    return {mode: protocol_entry(counts["global"], personal)}
