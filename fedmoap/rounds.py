"""The round loop: sample, download, train locally, upload, aggregate, evaluate every client."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

from tqdm.auto import tqdm

from fedmoap.config import RunConfig
from fedmoap.distributed import Comm
from fedmoap.federated_data import FederatedData
from fedmoap.local import evaluate, train_locally
from fedmoap.methods.base import ClientModule, Server, payload_bytes
from fedmoap.results import round_record
from fedmoap.seeding import numpy_rng, torch_generator
from fedmoap.store import ClientStore


def sample_participants(cfg: RunConfig, t: int) -> list[int]:
    """The clients of round ``t``: a seeded draw of max(1, round(r * N)) clients, sorted."""
    n = cfg.data.num_clients
    m = min(n, max(1, round(cfg.fed.participation * n)))
    if m == n:
        return list(range(n))
    return sorted(int(c) for c in numpy_rng(cfg.seed, "participants", t).choice(n, m, replace=False))


class Federation:
    """One process's view of the federation: the client module, the server, the client store.

    With several processes, each rank trains and evaluates its share of the clients; uploads,
    store references (see :mod:`fedmoap.store`) and accuracies are gathered on every rank, rank 0
    runs the server step and broadcasts the server state, so all ranks see the same store and
    server after each round.

    Args:
        cfg: the run configuration.
        module: the process's single client module (backbone shared, state swapped per client).
        server: the method's server.
        store: per-client state.
        data: cached features and per-client rows.
        comm: rank, world size and collectives (single process by default).
        autocast: context manager for mixed precision (Fabric's), or None.
    """

    def __init__(self, cfg: RunConfig, module: ClientModule, server: Server, store: ClientStore,
                 data: FederatedData, comm: Comm | None = None,
                 autocast: AbstractContextManager | None = None) -> None:
        self.cfg, self.module, self.server, self.store, self.data = cfg, module, server, store, data
        self.comm = comm or Comm()
        self.autocast = autocast

    def run_round(self, t: int, progress: bool = True,
                  stop: Callable[[], bool] = lambda: False) -> dict | None:
        """Round ``t`` (1-based) from start to evaluation; returns its ``results.json`` record, or
        None if ``stop()`` became true on some rank (the round is then abandoned: nothing of it
        is kept, and re-running it later gives the same result)."""
        comm = self.comm
        participants = sample_participants(self.cfg, t) if self.module.trains else []
        mine = comm.shard(participants)
        uploads, refs, bytes_down, stopped = {}, {}, 0, False
        for cid in tqdm(mine, desc=f"round {t} train", leave=False,
                        disable=not (progress and comm.is_main)):
            if stop():
                stopped = True
                break
            payload = self.server.payload(cid)
            bytes_down += payload_bytes(payload)
            uploads[cid], state = self.train_client(t, cid, payload)
            refs[cid] = self.store.write(cid, state, t)
        if comm.any(stopped or stop()):
            return None
        uploads, bytes_down = comm.gather_dicts(uploads), sum(comm.gather(bytes_down))
        self.store.adopt(comm.gather_dicts(refs))
        if comm.is_main:
            self.server.aggregate(uploads, {cid: self.data.train_size(cid) for cid in uploads})
        if comm.world_size > 1:
            self.server.load_state_dict(comm.broadcast(self.server.state_dict()))
        accs = comm.gather_dicts(self.evaluate(comm.shard(list(range(self.data.num_clients))),
                                               t, progress and comm.is_main))
        return round_record(
            t, {c: accs[c] for c in sorted(accs)}, {c: len(self.data.test_rows[c]) for c in accs},
            participants, bytes_up=sum(payload_bytes(u) for u in uploads.values()),
            bytes_down=bytes_down)

    def train_client(self, t: int, cid: int, payload: dict) -> tuple[dict, dict]:
        """Local training of client ``cid`` in round ``t``: returns (upload, new client state)."""
        state = self.store.get(cid)
        self.module.load_client(cid, state)
        self.module.receive(payload)
        features, labels = self.data.client_train(cid)
        optim = train_locally(self.module, features, labels, self.cfg.train,
                              torch_generator(self.cfg.seed, "train", t, cid),
                              state["optim"] if state else None, self.autocast)
        return self.module.upload(), self.module.client_state(optim)

    def evaluate(self, clients: list[int], t: int = 0, progress: bool = False) -> dict[int, float]:
        """Test accuracy of ``clients``, each with the model it would use now."""
        accs = {}
        for cid in tqdm(clients, desc=f"round {t} eval", leave=False, disable=not progress):
            self.module.load_client(cid, self.store.get(cid))
            self.module.prepare_eval(self.server.eval_payload(cid), cid in self.store)
            features, labels = self.data.client_test(cid)
            accs[cid] = evaluate(self.module, features, labels, self.cfg.train.eval_batch_size,
                                 self.autocast)
        return accs
