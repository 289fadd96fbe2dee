"""The round loop: sample, download, train locally, upload, aggregate, evaluate every client."""
from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
from tqdm.auto import tqdm

from fedmoap.config import RunConfig
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

    Args:
        cfg: the run configuration.
        module: the process's single client module (backbone shared, state swapped per client).
        server: the method's server.
        store: per-client state.
        data: cached features and per-client rows.
        autocast: context manager for mixed precision (Fabric's), or None.
    """

    def __init__(self, cfg: RunConfig, module: ClientModule, server: Server, store: ClientStore,
                 data: FederatedData, autocast: AbstractContextManager | None = None) -> None:
        self.cfg, self.module, self.server, self.store, self.data = cfg, module, server, store, data
        self.autocast = autocast

    def run_round(self, t: int, progress: bool = True) -> dict:
        """Round ``t`` (1-based) from start to evaluation; returns its ``results.json`` record."""
        participants = sample_participants(self.cfg, t) if self.module.trains else []
        payloads = {cid: self.server.payload(cid) for cid in participants}
        uploads = {}
        for cid in tqdm(participants, desc=f"round {t} train", leave=False, disable=not progress):
            uploads[cid] = self.train_client(t, cid, payloads[cid])
        self.server.aggregate(uploads, {cid: self.data.train_size(cid) for cid in uploads})
        accs = self.evaluate_all(t, progress)
        return round_record(
            t, accs, {c: len(self.data.test_rows[c]) for c in accs}, participants,
            bytes_up=sum(payload_bytes(u) for u in uploads.values()),
            bytes_down=sum(payload_bytes(p) for p in payloads.values()))

    def train_client(self, t: int, cid: int, payload: dict) -> dict:
        state = self.store.get(cid)
        self.module.load_client(cid, state)
        self.module.receive(payload)
        features, labels = self.data.client_train(cid)
        optim = train_locally(self.module, features, labels, self.cfg.train,
                              torch_generator(self.cfg.seed, "train", t, cid),
                              state["optim"] if state else None, self.autocast)
        upload = self.module.upload()
        self.store.put(cid, self.module.client_state(optim))
        return upload

    def evaluate_all(self, t: int, progress: bool = True) -> dict[int, float]:
        """Every client's test accuracy with the model it would use now."""
        accs = {}
        for cid in tqdm(range(self.data.num_clients), desc=f"round {t} eval", leave=False,
                        disable=not progress):
            self.module.load_client(cid, self.store.get(cid))
            self.module.prepare_eval(self.server.eval_payload(cid), cid in self.store)
            features, labels = self.data.client_test(cid)
            accs[cid] = evaluate(self.module, features, labels, self.cfg.train.eval_batch_size,
                                 self.autocast)
        return accs


