"""Building a federation from a run config: the one place it is done.

:func:`resolve` turns a config into what a federation runs on (the frozen backbone, the dataset,
the client split, the cached inputs); :func:`assemble` turns a config, those inputs and the
federation's collaborators (client store, transport, optionally a server) into a
:class:`~fedmoap.federation.rounds.Federation` at a :class:`Start` (a fresh run, or a checkpoint's
state), built whole: nothing is re-assigned afterwards. :func:`build_federation` does both.
``fedmoap fit``, a Flower node, ``fedmoap eval``, studies, benchmarks and the tests' worlds use
them, so a federation is the same wherever it is built; they differ only in what they pass in::

    fabric = default_fabric()
    federation, _ = build_federation(cfg, run_dir=Path("runs/x"), fabric=fabric)
    record = federation.run_round(1)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lightning import Fabric

from fedmoap.backbones import build_backbone
from fedmoap.backbones.base import Backbone
from fedmoap.data.sources import SourceData, load_source
from fedmoap.data.split import ClientSplit, load_split, make_split
from fedmoap.distributed import Comm
from fedmoap.errors import FedmoapError
from fedmoap.federation import evaluation, protocols
from fedmoap.federation.config import RunConfig
from fedmoap.federation.evaluation import ClassSplit
from fedmoap.federation.local import LocalTraining
from fedmoap.federation.privacy import private_training
from fedmoap.federation.rounds import Federation, Transport, trainers
from fedmoap.federation.schedule import Schedule
from fedmoap.federation.store import ClientStore
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.federated_data import FederatedData, gather_inputs
from fedmoap.inputs.pixels import PixelCache
from fedmoap.io import check_directory
from fedmoap.methods.base import RunContext, Server
from fedmoap.methods.prompts import PromptMethod

__all__ = [
    "DEFAULT_CACHE",
    "Start",
    "FRESH",
    "StartMismatch",
    "Resolved",
    "cache_root",
    "backbone_problems",
    "resolve",
    "schedule_of",
    "assemble",
    "build_federation",
]

DEFAULT_CACHE = Path("~/.cache/fedmoap")


@dataclass(frozen=True)
class Start:
    """The state a federation starts from: a fresh run's (round 0, nothing to restore), or what a
    round's checkpoint holds."""

    round: int = 0
    """The last finished round (0: none)."""
    server: dict | None = None
    """The server's state (:meth:`~fedmoap.methods.base.Server.state_dict`); None: its initial state."""
    store: dict | None = None
    """The client store's index (:meth:`~fedmoap.federation.store.ClientStore.state_dict`); None:
    no client has a state yet."""
    privacy: dict | None = None
    """The accountant's state (it keeps the solved noise multiplier); None: ``dp`` solves or takes
    it anew."""
    history: tuple[dict, ...] = ()
    """The finished rounds' ``results.json`` records: the accountant replays them."""

    @classmethod
    def of(cls, ckpt: dict | None) -> "Start":
        """A loaded checkpoint's state (:func:`fedmoap.run.checkpoint.load_latest`); None: round 0."""
        if ckpt is None:
            return cls()
        return cls(int(ckpt["round"]), ckpt["server"], ckpt["store"], ckpt.get("privacy"), tuple(ckpt["history"]))

    @property
    def fresh(self) -> bool:
        """Nothing to restore (a new run, a Flower node)."""
        return (self.round, self.server, self.store, self.privacy, self.history) == (0, None, None, None, ())


FRESH = Start()
"""A new run's start."""


class StartMismatch(Exception):
    """The state a federation was to start from (a checkpoint's) does not fit the federation its
    config builds; the message is the error that said so, its kind and its first 200 characters."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


@dataclass
class Resolved:
    """What a config resolves to before any federation exists."""

    backbone: Backbone
    source: SourceData
    classes: ClassSplit | None
    """The base/novel class split (``eval.modes`` base2novel), else None."""
    split: ClientSplit
    data: FederatedData
    caches: dict[str, Any] = field(default_factory=dict)
    """``features`` / ``tokens`` / ``pixels`` -> the cache that filled them (those the method reads)."""
    cache_root: Path = DEFAULT_CACHE / "features"

    @property
    def held_out(self) -> list[int]:
        """Clients that never train (``eval.modes`` unseen_clients)."""
        return list(self.split.extra.get("unseen_clients", []))

    @property
    def computed(self) -> int:
        """Images encoded (not read from the caches) while resolving."""
        return sum(c.computed for c in self.caches.values())


def cache_root(cfg: RunConfig) -> Path:
    """The feature cache directory (``data.feature_cache``, default ``~/.cache/fedmoap/features``)."""
    return Path(cfg.data.feature_cache or DEFAULT_CACHE / "features").expanduser()


def backbone_problems(cfg: RunConfig, backbone: Backbone) -> list[str]:
    """What ``backbone`` lacks for the configured method (prompt context, tower kind)."""
    method = cfg.method
    problems = method.backbone_problems(backbone)
    if isinstance(method, PromptMethod):
        problems = method.context_problems(backbone) + problems
    return problems


def resolve(
    cfg: RunConfig,
    *,
    fabric: Fabric,
    run_dir: Path | None = None,
    resuming: bool = False,
    backbone: Backbone | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> Resolved:
    """The backbone (``backbone``, or built from ``cfg.model``), the dataset, the split (the run
    directory's own when ``resuming``, else ``data.split_file`` or a new draw from the seed) and
    the method's inputs, encoded once into the caches (rank 0 first, the other ranks then read)."""
    root = cache_root(cfg)
    check_directory(root, "data.feature_cache")
    backbone = (backbone or build_backbone(cfg.model, cfg.seed)).to(fabric.device)
    problems = backbone_problems(cfg, backbone)
    if problems:
        raise FedmoapError("; ".join(problems))
    source = load_source(cfg.data)
    classes = evaluation.train_classes(cfg.eval, source)  # base2novel: partition base classes only
    domains = protocols.domain_plan(cfg.eval, source)  # xdomain, lodo, xdataset: source domains only
    split = (
        load_split(run_dir / "split.json", source, cfg.data.num_clients, key="run_dir")
        if resuming
        else make_split(
            cfg.data, source, cfg.seed, classes.base if classes else None, domains.source_codes if domains else None
        )
    )
    evaluation.complete_split(split, cfg, source, classes)
    batch, inputs = cfg.data.feature_batch_size, cfg.method.required_inputs()
    caches: dict[str, Any] = {}
    if "features" in inputs:
        caches["features"] = FeatureCache(root, backbone, batch, fabric.device, stop=stop)
    if "tokens" in inputs:
        caches["tokens"] = FeatureCache(root, backbone, batch, fabric.device, tokens=True, stop=stop)
    if "pixels" in inputs:
        caches["pixels"] = PixelCache(root, backbone)
    with fabric.rank_zero_first():
        data = gather_inputs(
            inputs,
            cfg.data,
            source,
            split,
            caches.get("features"),
            caches.get("tokens"),
            caches.get("pixels"),
            cfg.seed,
            backbone=backbone,
            device=fabric.device,
        )
    if classes is not None:  # labels in base-then-novel order; clients know the base classes
        evaluation.apply_class_order(data, classes)
    return Resolved(backbone, source, classes, split, data, caches, root)


def schedule_of(cfg: RunConfig, held_out: list[int] | frozenset[int] = ()) -> Schedule:
    """The run's schedule: who trains when, batch sizes, when everyone is evaluated."""
    t = cfg.train
    return Schedule(
        cfg.seed,
        cfg.data.num_clients,
        cfg.fed.participation,
        t.local_epochs,
        t.batch_size,
        t.eval_batch_size,
        cfg.fed.eval_every,
        cfg.fed.rounds,
        count=cfg.fed.participants,
        own_label_space=cfg.eval.local_label_space == "own",
        held_out=frozenset(held_out),
        eval_clients=cfg.eval.clients_per_round,
    )


def assemble(
    cfg: RunConfig,
    data: FederatedData,
    backbone: Backbone,
    *,
    fabric: Fabric,
    store: ClientStore,
    start: Start = FRESH,
    server: Server | None = None,
    transport: Transport | None = None,
    comm: Comm | None = None,
    classes: ClassSplit | None = None,
    held_out: list[int] | tuple[int, ...] = (),
) -> Federation:
    """A federation of ``cfg``'s method over ``data`` on ``backbone`` at ``start``, built whole:
    the client module (its label space: the base classes under base-to-novel, else
    ``data.classnames``), the ``server`` (None: the method's, from the module's initial shared
    tensors; a Flower node passes the payloads it was sent), the client ``store``, the schedule,
    plain or private local training (``dp``), the evaluation modes beyond ``local`` and the
    ``transport`` (None: every client in this process). ``start``'s server state, store index and
    accountant state are restored and the accountant replays its rounds; a start that does not fit
    raises :class:`StartMismatch`."""
    try:
        return _assemble(cfg, data, backbone, fabric, store, start, server, transport, comm, classes, held_out)
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        if start.fresh:
            raise
        raise StartMismatch(exc) from None


def _assemble(
    cfg: RunConfig,
    data: FederatedData,
    backbone: Backbone,
    fabric: Fabric,
    store: ClientStore,
    start: Start,
    server: Server | None,
    transport: Transport | None,
    comm: Comm | None,
    classes: ClassSplit | None,
    held_out: list[int] | tuple[int, ...],
) -> Federation:
    method, t = cfg.method, cfg.train
    keep = {"keep": True, "reset": False}.get(t.optimizer_state, method.keep_optimizer_state)
    run = RunContext(cfg.seed, cfg.data.num_clients, t, keep, cfg.fed.rounds)
    names = classes.names_of(classes.base) if classes is not None else list(data.classnames)
    module = method.build_client(backbone, names, run).to(fabric.device)
    if server is None:
        server = method.build_server(module.global_init(), run)
    schedule = schedule_of(cfg, held_out)
    modes = (
        evaluation.ModeEvaluator(cfg.eval, classes, list(held_out), t.local_epochs)
        if set(cfg.eval.modes) - {"local"}
        else None
    )
    privacy = None
    if cfg.dp.mode != "off":  # may refuse a budget (fedmoap/federation/privacy.py)
        privacy = private_training(
            cfg.dp,
            seed=cfg.seed,
            method=method,
            module=module,
            inner=LocalTraining(data, fabric, schedule.batch_size),
            schedule=schedule,
            trainers=functools.partial(trainers, method, schedule, data.num_clients),
            state=start.privacy,
        )
    if start.server is not None:
        server.load_state_dict(start.server)
    if start.store is not None:
        store.load_state_dict(start.store)
    if privacy is not None:
        privacy.replay(list(start.history))
    return Federation(
        method, module, server, store, data, schedule, fabric, comm, privacy=privacy, modes=modes, transport=transport
    )


def build_federation(
    cfg: RunConfig,
    *,
    run_dir: Path,
    fabric: Fabric,
    start: Start = FRESH,
    store: ClientStore | None = None,
    server: Server | None = None,
    transport: Transport | None = None,
    comm: Comm | None = None,
    backbone: Backbone | None = None,
    resuming: bool = False,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[Federation, Resolved]:
    """:func:`resolve` then :func:`assemble`: the federation at ``start`` and what it was resolved
    from. ``store``: None is ``run_dir/clients``; ``resuming``: the split is ``run_dir``'s own."""
    resolved = resolve(cfg, fabric=fabric, run_dir=run_dir, resuming=resuming, backbone=backbone, stop=stop)
    federation = assemble(
        cfg,
        resolved.data,
        resolved.backbone,
        fabric=fabric,
        store=store if store is not None else ClientStore(run_dir / "clients"),
        start=start,
        server=server,
        transport=transport,
        comm=comm,
        classes=resolved.classes,
        held_out=resolved.held_out,
    )
    return federation, resolved
