"""The round loop: sample, download, train locally, upload, aggregate, evaluate."""

from __future__ import annotations

from typing import Callable

import torch
from lightning import Fabric
from tqdm.auto import tqdm

from fedmoap.aggregate import payload_bytes
from fedmoap.distributed import Comm
from fedmoap.federation.local import LocalTraining, evaluate, train_locally
from fedmoap.federation.privacy import PrivateTraining
from fedmoap.federation.results import round_record
from fedmoap.federation.schedule import Schedule
from fedmoap.federation.store import ClientStore
from fedmoap.inputs.federated_data import FederatedData
from fedmoap.methods.base import ClientModule, Method, Server

__all__ = ["Trained", "Transport", "InProcess", "Federation", "trainers", "default_fabric"]

Trained = tuple[dict[int, dict], dict[int, int], int, bool]
"""What a round's local training returns: (uploads, store references, bytes downloaded, stopped)."""


class Transport:
    """The seam between the server's round and the clients: the participants' training (payload
    down, upload up) and the clients' evaluation. The server's side of the round (sampling,
    aggregation, accounting, results) stays in :meth:`Federation.run_round`."""

    engine: str = "fit"
    """What runs the clients, as ``results.json`` records it (``fit``: this process; ``flower``)."""
    run_id: str | None = None
    """The engine's own id of the run (Flower's run id), as ``results.json``'s ``engine_run_id``
    records it; None: the engine has none (the entry is left out)."""

    def train(
        self, federation: "Federation", t: int, clients: list[int], progress: bool, stop: Callable[[], bool]
    ) -> Trained:
        """Round ``t``'s local training of ``clients``, in this order; uploads in the same order."""
        raise NotImplementedError

    def evaluate(
        self, federation: "Federation", clients: list[int], t: int, progress: bool
    ) -> dict[int, tuple[int, int]]:
        """(correct, total) of each of ``clients`` after round ``t``."""
        raise NotImplementedError

    def statistics(
        self, federation: "Federation", t: int, clients: list[int]
    ) -> tuple[dict[int, dict], dict[int, int]]:
        """Seed-methods: each of ``clients``' statistics at step ``t``
        (:meth:`Federation.client_statistics`), and the store references of the states it kept."""
        raise NotImplementedError


class InProcess(Transport):
    """Every client in this process, one after the other, its state in the federation's store."""

    def train(
        self, federation: "Federation", t: int, clients: list[int], progress: bool, stop: Callable[[], bool]
    ) -> Trained:
        uploads, refs, bytes_down = {}, {}, 0
        federation.server.prepare_round(t, clients)
        for cid in tqdm(clients, desc=f"round {t} train", leave=False, disable=not progress):
            if stop():
                return uploads, refs, bytes_down, True
            payload = federation.server.payload(cid, t)
            bytes_down += payload_bytes(payload)
            uploads[cid], state = federation.train_client(t, cid, payload)
            refs[cid] = federation.store.write(cid, state, t)
        return uploads, refs, bytes_down, False

    def evaluate(
        self, federation: "Federation", clients: list[int], t: int, progress: bool
    ) -> dict[int, tuple[int, int]]:
        return federation.evaluate(clients, t, progress)

    def statistics(
        self, federation: "Federation", t: int, clients: list[int]
    ) -> tuple[dict[int, dict], dict[int, int]]:
        stats, refs = {}, {}
        for cid in clients:
            stats[cid], state = federation.client_statistics(t, cid)
            if state is not None:
                refs[cid] = federation.store.write(cid, state, 0)
        return stats, refs


class Federation:
    """One process's view of the federation: the method's client module and server, the client
    store, the clients' data.

    With several processes, each rank trains and evaluates its share of the clients; uploads,
    store references (see :mod:`fedmoap.federation.store`) and accuracies are gathered on every rank, rank 0
    runs the server step and broadcasts the server state, so all ranks see the same store and
    server after each round.

    Built whole by :func:`fedmoap.federation.build.assemble`: its collaborators are the ones it was
    built with for as long as it lives (assigning or deleting an attribute raises AttributeError).
    """

    def __init__(
        self,
        method: Method,
        module: ClientModule,
        server: Server,
        store: ClientStore,
        data: FederatedData,
        schedule: Schedule,
        fabric: Fabric,
        comm: Comm | None = None,
        privacy: PrivateTraining | None = None,
        modes: Callable[..., dict] | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.method, self.module, self.server, self.store = method, module, server, store
        self.data, self.schedule, self.fabric = data, schedule, fabric
        self.comm = comm or Comm()
        self.privacy = privacy
        """Differential privacy (``dp.mode`` not off): the upload mechanism or DP-SGD, the accountant."""
        self.training: LocalTraining = privacy or LocalTraining(data, fabric, schedule.batch_size)
        """How a participant trains and what leaves it: plain, or wrapped by :attr:`privacy`."""
        self.modes = modes
        """Evaluation modes beyond ``local`` (:class:`fedmoap.federation.evaluation.ModeEvaluator`): called
        as ``modes(federation, t, local_counts, progress)`` after each evaluation, its entries
        are added to the round's record."""
        self.transport: Transport = transport or InProcess()
        """How payloads reach the participants and uploads and accuracies come back: in this
        process (``fedmoap fit``), or as Flower messages to SuperNodes (:mod:`fedmoap.run.flower`)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in self.__dict__:
            raise AttributeError(f"a federation's {name} is fixed when it is built (fedmoap.federation.build)")
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a federation's {name} is fixed when it is built (fedmoap.federation.build)")

    def run_round(self, t: int, progress: bool = True, stop: Callable[[], bool] = lambda: False) -> dict | None:
        """Round ``t`` (1-based) from start to evaluation; returns its ``results.json`` record, or
        None if ``stop()`` became true on some rank (the round is then abandoned: nothing of it
        is kept, and re-running it later gives the same result)."""
        comm = self.comm
        stats_up = 0  # client statistics (seed-methods): the set-up pass opens round 1
        if t == 1 and self.method.collects_statistics(0):
            stats_up = self.collect_statistics(0, self.schedule.clients)  # held-out clients: never
        participants = self.trainers(t)
        mine = comm.shard(participants)
        uploads, refs, bytes_down, stopped = self.transport.train(self, t, mine, progress and comm.is_main, stop)
        if comm.any(stopped or stop()):
            return None
        uploads, bytes_down = comm.gather_dicts(uploads), sum(comm.gather(bytes_down))
        self.store.adopt(comm.gather_dicts(refs))
        if comm.is_main:
            self.server.aggregate(t, uploads, {cid: self.data.train_size(cid) for cid in uploads})
        if comm.world_size > 1:
            self.server.load_state_dict(comm.broadcast(self.server.state_dict()))
        if self.method.collects_statistics(t):  # seed-methods: e.g. refreshed prototypes
            stats_up += self.collect_statistics(t, participants)
        counts = None
        if self.schedule.evaluates(t):
            mine = comm.shard(self.schedule.evaluated(t))
            counts = comm.gather_dicts(self.transport.evaluate(self, mine, t, progress and comm.is_main))
            counts = {c: counts[c] for c in sorted(counts)}
        record = round_record(
            t,
            counts,
            participants,
            bytes_up=sum(payload_bytes(u) for u in uploads.values()) + stats_up,
            bytes_down=bytes_down,
        )
        if counts is not None and self.modes is not None:
            record.update(self.modes(self, t, counts, progress and comm.is_main))
        record.update(self.training.after_round(t, participants, comm.gather_dicts))  # DP: epsilon so far
        return record

    def trainers(self, t: int) -> list[int]:
        """Who trains in round ``t`` (:func:`trainers`): the one answer for the loop and the
        privacy accountant's plan."""
        return trainers(self.method, self.schedule, self.data.num_clients, t)

    def train_client(self, t: int, cid: int, payload: dict) -> tuple[dict, dict]:
        """Local training of client ``cid`` in round ``t``: returns (what the server receives,
        the client's new state)."""
        self.module.load_client(cid, self.store.get(cid))
        self.module.receive(payload)
        self.training.train(self.module, cid, t, self.method.local_epochs(t, self.schedule.local_epochs))
        state = self.module.client_state()
        return self.training.release(t, cid, self.module.upload(), payload), state

    # --- client statistics (seed-methods) ---
    def collect_statistics(self, t: int, clients: list[int]) -> int:
        """Fold ``clients``' statistics (:meth:`ClientModule.statistics` on their plain training
        batches, each client prepared as for evaluation) into the server: ``t = 0`` is the
        set-up pass (every client's state is stored as of round 0 if the module
        ``keeps_statistics``), ``t >= 1`` follows round ``t``'s aggregation. Returns the bytes
        the clients sent."""
        comm = self.comm
        stats, refs = self.transport.statistics(self, t, comm.shard(clients))
        stats = comm.gather_dicts(stats)
        self.store.adopt(comm.gather_dicts(refs))
        if comm.is_main:
            self.server.fold_statistics(t, stats)
        if comm.world_size > 1:
            self.server.load_state_dict(comm.broadcast(self.server.state_dict()))
        return sum(payload_bytes(s) for s in stats.values())

    def client_statistics(self, t: int, cid: int) -> tuple[dict, dict | None]:
        """Client ``cid``'s side of :meth:`collect_statistics`: (its statistics, its state to keep
        as of round 0 at the set-up pass of a module that ``keeps_statistics``, else None)."""
        self.module.load_client(cid, self.store.get(cid))
        self.module.prepare_eval(self.server.eval_payload(cid))
        with torch.no_grad(), self.fabric.autocast():
            stats = self.module.statistics(self.data.plain_train_batches(cid, self.schedule.eval_batch_size))
        keep = t == 0 and self.module.keeps_statistics
        return stats, self.module.client_state() if keep else None

    # --- end client statistics ---

    # ----- evaluation modes (fedmoap/federation/evaluation.py) ------------------------------------
    def evaluate(self, clients: list[int], t: int = 0, progress: bool = False) -> dict[int, tuple[int, int]]:
        """(correct, total) on the test set of each of ``clients``, each with the model it would
        use now. A method whose evaluation depends on the server alone is set up once for all."""
        accs, ready = {}, False
        shared = not self.module.personal_eval
        own, names = self.schedule.own_label_space, list(self.module.classnames)
        bs = self.schedule.eval_batch_size
        try:
            for cid in tqdm(clients, desc=f"round {t} eval", leave=False, disable=not progress):
                if not (shared and ready) or own:
                    if list(self.module.classnames) != names:  # adaptation trains over all classes
                        self.module.set_classnames(names)
                    self.module.load_client(cid, None if shared else self.store.get(cid))
                    self.module.prepare_eval(self.server.eval_payload(cid))
                    self.adapt(cid, t)
                    if own:  # the client's own classes are its label space
                        own_names, relabel = self.data.own_classes(cid)
                        self.module.set_classnames(own_names)
                    with self.fabric.autocast():
                        self.module.begin_eval()
                    ready = True
                batches = (
                    self.data.rows_batches(self.data.test_pos[cid], bs, relabel)
                    if own
                    else self.data.test_batches(cid, bs)
                )
                accs[cid] = evaluate(self.module, batches, self.fabric)
        finally:
            if list(self.module.classnames) != names:
                self.module.set_classnames(names)
        return accs

    def adapt(self, cid: int, t: int, epochs: int | None = None, stream: str = "adapt") -> None:
        """Evaluation-time training of client ``cid``, whose evaluation model the module holds: a
        fresh optimizer, ``epochs`` epochs of its training batches from the random stream (seed,
        ``stream``, t, cid), the lr annealed over these epochs alone whatever
        ``train.lr_schedule`` (a training of its own, not round ``t``'s). ``epochs`` None: the
        module's own (:meth:`ClientModule.eval_adaptation_epochs`, e.g. +FT's fine-tuning; none
        for most methods); a number: a never-trained client's few-shot adaptation
        (:class:`~fedmoap.methods.base.HeldOut`). Nothing is stored or uploaded, and the next
        client's state is loaded over it."""
        if epochs is None:
            epochs = self.module.eval_adaptation_epochs(t, t >= self.schedule.rounds)
            if epochs <= 0:
                return
            if not self.module.personal_eval:
                raise ValueError(
                    f"{type(self.module).__name__} adapts at evaluation time, so it must set personal_eval = True"
                )
        self.module.begin_adaptation()
        batches = self.data.train_batches(cid, t, self.schedule.batch_size, purpose=stream)
        train_locally(self.module, batches, epochs, self.fabric, t=t, federated=False)


def trainers(method: Method, schedule: Schedule, num_clients: int, t: int) -> list[int]:
    """Who trains in round ``t``: the method's choice from the schedule's seeded draw, never a
    held-out client."""
    chosen = method.participants(schedule.participants(t), num_clients, t)
    return [c for c in chosen if c not in schedule.held_out]


def default_fabric() -> Fabric:
    """A single-process CPU Fabric in full precision (tests, benchmarks, notebooks)."""
    torch.set_float32_matmul_precision("highest")
    return Fabric(accelerator="cpu", devices=1, precision="32-true")
