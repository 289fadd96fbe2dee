"""The round loop: sample, download, train locally, upload, aggregate, evaluate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from lightning import Fabric
from tqdm.auto import tqdm

from fedmoap.distributed import Comm
from fedmoap.federated_data import FederatedData
from fedmoap.local import evaluate, train_locally
from fedmoap.methods.base import ClientModule, Method, Server, payload_bytes
from fedmoap.results import round_record
from fedmoap.seeding import numpy_rng
from fedmoap.store import ClientStore


@dataclass(frozen=True)
class Schedule:
    """Who trains when, and when everyone is evaluated."""

    seed: int
    num_clients: int
    participation: float = 1.0
    local_epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 512
    eval_every: int = 1
    rounds: int = 1
    """The run's last round (always evaluated)."""

    def participants(self, t: int) -> list[int]:
        """The clients of round ``t``: a seeded draw of max(1, round(r * N)) clients, sorted."""
        n = self.num_clients
        m = min(n, max(1, round(self.participation * n)))
        if m == n:
            return list(range(n))
        return sorted(int(c) for c in numpy_rng(self.seed, "participants", t).choice(n, m, replace=False))

    def evaluates(self, t: int) -> bool:
        return t % self.eval_every == 0 or t >= self.rounds


class Federation:
    """One process's view of the federation: the method's client module and server, the client
    store, the clients' data.

    With several processes, each rank trains and evaluates its share of the clients; uploads,
    store references (see :mod:`fedmoap.store`) and accuracies are gathered on every rank, rank 0
    runs the server step and broadcasts the server state, so all ranks see the same store and
    server after each round.
    """

    def __init__(self, method: Method, module: ClientModule, server: Server, store: ClientStore,
                 data: FederatedData, schedule: Schedule, fabric: Fabric, comm: Comm | None = None) -> None:
        self.method, self.module, self.server, self.store = method, module, server, store
        self.data, self.schedule, self.fabric = data, schedule, fabric
        self.comm = comm or Comm()

    def run_round(self, t: int, progress: bool = True,
                  stop: Callable[[], bool] = lambda: False) -> dict | None:
        """Round ``t`` (1-based) from start to evaluation; returns its ``results.json`` record, or
        None if ``stop()`` became true on some rank (the round is then abandoned: nothing of it
        is kept, and re-running it later gives the same result)."""
        comm = self.comm
        participants = self.schedule.participants(t) if self.method.trains else []
        mine = comm.shard(participants)
        uploads, refs, bytes_down, stopped = {}, {}, 0, False
        for cid in tqdm(mine, desc=f"round {t} train", leave=False,
                        disable=not (progress and comm.is_main)):
            if stop():
                stopped = True
                break
            payload = self.server.payload(cid, t)
            bytes_down += payload_bytes(payload)
            uploads[cid], state = self.train_client(t, cid, payload)
            refs[cid] = self.store.write(cid, state, t)
        if comm.any(stopped or stop()):
            return None
        uploads, bytes_down = comm.gather_dicts(uploads), sum(comm.gather(bytes_down))
        self.store.adopt(comm.gather_dicts(refs))
        if comm.is_main:
            self.server.aggregate(t, uploads, {cid: self.data.train_size(cid) for cid in uploads})
        if comm.world_size > 1:
            self.server.load_state_dict(comm.broadcast(self.server.state_dict()))
        accs = None
        if self.schedule.evaluates(t):
            mine = comm.shard(list(range(self.data.num_clients)))
            accs = comm.gather_dicts(self.evaluate(mine, t, progress and comm.is_main))
            accs = {c: accs[c] for c in sorted(accs)}
        return round_record(
            t, accs, {c: self.data.test_size(c) for c in range(self.data.num_clients)},
            participants, bytes_up=sum(payload_bytes(u) for u in uploads.values()),
            bytes_down=bytes_down)

    def train_client(self, t: int, cid: int, payload: dict) -> tuple[dict, dict]:
        """Local training of client ``cid`` in round ``t``: returns (upload, new client state)."""
        stored = self.store.get(cid)
        self.module.load_client(cid, stored)
        self.module.receive(payload)
        batches = self.data.train_batches(cid, t, self.schedule.batch_size)
        scaler = train_locally(self.module, batches, self.schedule.local_epochs, self.fabric,
                               (stored or {}).get("scaler"))
        state = self.module.client_state()
        if scaler is not None:
            state["scaler"] = scaler
        return self.module.upload(), state

    def evaluate(self, clients: list[int], t: int = 0, progress: bool = False) -> dict[int, float]:
        """Test accuracy of ``clients``, each with the model it would use now. A method whose
        evaluation depends on the server alone is set up once for all of them."""
        accs, ready = {}, False
        shared = not self.module.personal_eval
        for cid in tqdm(clients, desc=f"round {t} eval", leave=False, disable=not progress):
            if not (shared and ready):
                self.module.load_client(cid, None if shared else self.store.get(cid))
                self.module.prepare_eval(self.server.eval_payload(cid))
                self.adapt(cid, t)
                with self.fabric.autocast():
                    self.module.begin_eval()
                ready = True
            accs[cid] = evaluate(self.module, self.data.test_batches(cid, self.schedule.eval_batch_size),
                                 self.fabric)
        return accs

    def adapt(self, cid: int, t: int) -> None:
        """Evaluation-time training (:meth:`ClientModule.eval_adaptation_epochs`): the module,
        already holding client ``cid``'s evaluation model, trains on the client's training batches
        (random stream (seed, "adapt", t, cid)) with a fresh optimizer. Nothing of it is stored or
        uploaded: the store is not written here and the next client's state is loaded over it."""
        epochs = self.module.eval_adaptation_epochs(t, t >= self.schedule.rounds)
        if epochs <= 0:
            return
        if not self.module.personal_eval:
            raise ValueError(f"{type(self.module).__name__} adapts at evaluation time, so it must "
                             "set personal_eval = True")
        self.module.begin_adaptation()
        batches = self.data.train_batches(cid, t, self.schedule.batch_size, purpose="adapt")
        train_locally(self.module, batches, epochs, self.fabric)


def default_fabric() -> Fabric:
    """A single-process CPU Fabric in full precision (tests, benchmarks, notebooks)."""
    torch.set_float32_matmul_precision("highest")
    return Fabric(accelerator="cpu", devices=1, precision="32-true")
