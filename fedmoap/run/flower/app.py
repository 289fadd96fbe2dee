"""Any fedmoap method as a Flower ServerApp and ClientApp (Flower's Message API).

The ServerApp runs ``fedmoap fit``'s own loop (:func:`fedmoap.run.fit.fit`) on the federation
:func:`~fedmoap.federation.build.build_federation` assembles, with :class:`FlowerTransport` in place of the
in-process clients: the same schedule draws the participants, the same method server makes each
participant's payload (pFedMoAP's experts differ per client) and aggregates the uploads with the
same weights, the same accountant accounts DP, and results.json, checkpoints and TensorBoard land
in the same run directory.

The ClientApp is one client per SuperNode (``node_config["partition-id"]`` = client id). It
builds the same federation for its own process, once (the method's client module, local training
or :class:`~fedmoap.federation.privacy.PrivateTraining` around it; the server's side as its
messages bring it), and trains, releases and evaluates only its partition. What the client keeps
(personal prompts, gating network, downloaded experts, optimizer state) is written to a
node-local client store (``node_config["fedmoap-dir"]``, else ``<run_dir>/nodes``); the node's
Context state keeps which round's version is current. Neither goes into a message: a train reply
carries the (released) upload, the training-set size and, under DP, the norms before clipping; an
evaluate reply carries (correct, total).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedmoap.aggregate import payload_bytes
from fedmoap.errors import FedmoapError
from fedmoap.federation.rounds import Federation, Trained, Transport
from fedmoap.federation.store import ClientStore
from fedmoap.run.flower.messages import from_record, to_record

__all__ = [
    "SETTINGS",
    "STATISTICS",
    "NODE_DIR",
    "DP_NORMS",
    "settings_of",
    "FlowerTransport",
    "server_app",
    "Node",
    "Downloaded",
    "node_of",
    "client_app",
    "SERVER_APP",
    "CLIENT_APP",
]

SETTINGS = "fedmoap-args"
"""The run config key (a Flower App's ``[tool.flwr.app.config]``) holding ``fedmoap fit``'s
arguments as a JSON list, ``--run_dir`` included."""
STATISTICS = f"{MessageType.QUERY}.statistics"
"""The message type of a seed-method's statistics pass
(:meth:`~fedmoap.federation.rounds.Federation.client_statistics`)."""
NODE_DIR = "fedmoap-dir"
"""The node config key of a SuperNode's own directory for its client store."""
DP_NORMS = "fedmoap-dp-norms"
"""The run config key (bool, default false) that lets a DP node also send its norms before clipping.
No DP mechanism covers them; only results.json's ``dp_median_norm`` and ``dp_clipped_fraction``
need them. ``fedmoap flower`` turns it on in simulation (same results.json as ``fit``); a written
Flower App has it off (those two fields are then empty)."""


def settings_of(context: Context, fixed: list[str] | None) -> list[str]:
    """``fedmoap fit``'s arguments: ``fixed`` (an app made for one run), else the run config's."""
    if fixed is not None:
        return list(fixed)
    if SETTINGS not in context.run_config:
        raise FedmoapError(f"the Flower run config has no {SETTINGS!r} (write the app with `fedmoap flower`)")
    return list(json.loads(str(context.run_config[SETTINGS])))


# ------------------------------------------------------------------------------------ server
class FlowerTransport(Transport):
    """A round's training and evaluation as Flower messages, one SuperNode per client.

    ``watch(direction, message)`` (tests) sees every message sent (``"out"``) and received
    (``"in"``) by the server."""

    engine = "flower"

    def __init__(self, grid: Grid, wait_s: float = 600.0, watch: Callable[[str, Message], None] | None = None) -> None:
        self.grid, self.wait_s, self.watch = grid, wait_s, watch or (lambda d, m: None)
        self.nodes: dict[int, int] = {}
        """client id -> node id, from each node's answer to a query."""

    def _exchange(self, messages: list[Message]) -> dict[int, Message]:
        for m in messages:
            self.watch("out", m)
        replies = {}
        for reply in self.grid.send_and_receive(messages):
            self.watch("in", reply)
            if reply.has_error():
                raise FedmoapError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
            replies[reply.metadata.src_node_id] = reply
        if len(replies) != len(messages):
            raise FedmoapError(f"{len(messages) - len(replies)} of {len(messages)} nodes did not reply")
        return replies

    def connect(self, num_clients: int) -> dict[int, int]:
        """Ask every node which client it is; wait until all ``num_clients`` are there."""
        if len(self.nodes) == num_clients:
            return self.nodes
        deadline = time.monotonic() + self.wait_s
        while len(ids := list(self.grid.get_node_ids())) < num_clients:
            if time.monotonic() > deadline:
                raise FedmoapError(
                    f"{len(ids)} SuperNodes connected, the config has data.num_clients "
                    f"{num_clients}: start one SuperNode per client"
                )
            time.sleep(1.0)
        queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, group_id="0") for n in ids]
        replies = self._exchange(queries)
        nodes = {int(r.content["client"]["partition-id"]): n for n, r in replies.items()}
        if sorted(nodes) != list(range(num_clients)):
            raise FedmoapError(f"the SuperNodes' partition-ids are {sorted(nodes)}, not 0..{num_clients - 1}")
        self.nodes = nodes
        return nodes

    def train(
        self, federation: Federation, t: int, clients: list[int], progress: bool, stop: Callable[[], bool]
    ) -> Trained:
        nodes = self.connect(federation.data.num_clients)
        if stop():
            return {}, {}, 0, True
        privacy, messages, bytes_down = federation.privacy, [], 0
        for cid in clients:
            payload = federation.server.payload(cid, t)
            bytes_down += payload_bytes(payload)
            config = {"round": t, "client": cid}
            if privacy is not None:  # the server's noise: the accountant's z
                config["noise-multiplier"] = float(privacy.noise_multiplier)
            content = RecordDict({"payload": to_record(payload), "config": ConfigRecord(config)})
            messages.append(Message(content, dst_node_id=nodes[cid], message_type=MessageType.TRAIN, group_id=str(t)))
        replies = self._exchange(messages) if messages else {}
        uploads = {}
        for cid in clients:  # the participants' order: the aggregation sums in it
            content = replies[nodes[cid]].content
            uploads[cid] = from_record(content["upload"])
            if privacy is not None:
                privacy.add_norms(cid, [float(x) for x in content["metrics"].get("dp-norms", [])])
        return uploads, {}, bytes_down, False

    def evaluate(
        self, federation: Federation, clients: list[int], t: int, progress: bool
    ) -> dict[int, tuple[int, int]]:
        nodes = self.connect(federation.data.num_clients)
        messages = [
            Message(
                RecordDict(
                    {
                        "payload": to_record(federation.server.eval_payload(cid)),
                        "config": ConfigRecord({"round": t, "client": cid}),
                    }
                ),
                dst_node_id=nodes[cid],
                message_type=MessageType.EVALUATE,
                group_id=str(t),
            )
            for cid in clients
        ]
        replies = self._exchange(messages)
        return {
            cid: (
                int(replies[nodes[cid]].content["metrics"]["correct"]),
                int(replies[nodes[cid]].content["metrics"]["total"]),
            )
            for cid in clients
        }

    def statistics(self, federation: Federation, t: int, clients: list[int]) -> tuple[dict[int, dict], dict[int, int]]:
        nodes = self.connect(federation.data.num_clients)
        messages = [
            Message(
                RecordDict(
                    {
                        "payload": to_record(federation.server.eval_payload(cid)),
                        "config": ConfigRecord({"round": t, "client": cid}),
                    }
                ),
                dst_node_id=nodes[cid],
                message_type=STATISTICS,
                group_id=str(t),
            )
            for cid in clients
        ]
        replies = self._exchange(messages) if messages else {}
        return {cid: from_record(replies[nodes[cid]].content["statistics"]) for cid in clients}, {}


def server_app(
    args: list[str] | None = None,
    watch: Callable[[str, Message], None] | None = None,
    done: Callable[[dict], None] | None = None,
) -> ServerApp:
    """The ServerApp of a run: ``args`` are ``fedmoap fit``'s (None: the run config's
    :data:`SETTINGS`); ``watch`` sees every message (tests); ``done`` gets what
    :func:`~fedmoap.run.fit.fit` returns (timings, for benchmarks)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedmoap.run.fit import fit
        from fedmoap.run.flower.checks import checked_config

        cfg, run_dir = checked_config(settings_of(context, args))
        out = fit(cfg, run_dir, progress=False, transport=FlowerTransport(grid, watch=watch))
        if done is not None:
            done(out)

    return app


# ------------------------------------------------------------------------------------ client
class Node:
    """One process's client side of a run: the federation built once from the run's config (the
    client module, local training and DP) with the server's side as the messages bring it
    (:class:`Downloaded`) and a client store under ``root``, shared by the SuperNodes this process
    serves; each message makes it the node's own client, the store's index re-pointed to the
    version the node's Context state names."""

    def __init__(self, args: list[str], root: Path) -> None:
        import lightning as L
        import torch

        from fedmoap.federation.build import build_federation
        from fedmoap.run.flower.checks import checked_config

        cfg, _ = checked_config(args, fresh=False)
        f = cfg.fabric
        if f.threads:
            torch.set_num_threads(f.threads)
        torch.set_float32_matmul_precision("highest")
        fabric = L.Fabric(accelerator=f.accelerator, devices=1, num_nodes=1, precision=f.precision)
        self.federation, _ = build_federation(
            cfg, run_dir=root, fabric=fabric, store=ClientStore(root / "clients"), server=Downloaded()
        )

    def client(self, context: Context, content: RecordDict) -> int:
        """The node's client id (its partition-id), checked against the message's; the store's
        index reset to the node's Context state (the round of its client's current version, if any)."""
        cid = int(context.node_config["partition-id"])
        asked = int(content["config"]["client"])
        if asked != cid:
            raise FedmoapError(f"a message for client {asked} reached the node of client {cid}")
        held = "fedmoap" in context.state
        self.federation.store.reset({cid: int(context.state["fedmoap"]["round"])} if held else {})
        return cid

    def train(self, context: Context, content: RecordDict, send_norms: bool = False) -> RecordDict:
        fed, cid = self.federation, self.client(context, content)
        t = int(content["config"]["round"])
        if fed.privacy is not None:
            fed.privacy.noise_multiplier = float(content["config"]["noise-multiplier"])
        upload, state = fed.train_client(t, cid, from_record(content["payload"]))
        self.keep(context, cid, state, t)
        metrics: dict[str, Any] = {"num-examples": fed.data.train_size(cid)}
        norms = fed.privacy.norms_of(cid) if fed.privacy is not None else []
        if send_norms and fed.privacy is not None:
            metrics["dp-norms"] = [float(x) for x in norms]
        return RecordDict({"upload": to_record(upload), "metrics": MetricRecord(metrics)})

    def statistics(self, context: Context, content: RecordDict) -> RecordDict:
        fed, cid = self.federation, self.client(context, content)
        fed.server.eval = from_record(content["payload"])
        stats, state = fed.client_statistics(int(content["config"]["round"]), cid)
        if state is not None:  # the set-up pass: what the client learnt of its data, as of round 0
            self.keep(context, cid, state, 0)
        return RecordDict({"statistics": to_record(stats)})

    def keep(self, context: Context, cid: int, state: dict, t: int) -> None:
        """Store the client's new state as of round ``t``, drop its previous one."""
        fed = self.federation
        previous = context.state["fedmoap"]["round"] if "fedmoap" in context.state else None
        fed.store.adopt({cid: fed.store.write(cid, state, t)})
        if previous is not None and int(previous) != t:
            fed.store.path(cid, int(previous)).unlink(missing_ok=True)
        context.state["fedmoap"] = ConfigRecord({"round": t})

    def evaluate(self, context: Context, content: RecordDict) -> RecordDict:
        fed, cid = self.federation, self.client(context, content)
        fed.server.eval = from_record(content["payload"])
        correct, total = fed.evaluate([cid], int(content["config"]["round"]))[cid]
        return RecordDict({"metrics": MetricRecord({"correct": correct, "total": total})})


class Downloaded:
    """The server as a node sees it: the evaluation payload the last message brought (a node's
    federation calls nothing else of its server)."""

    def __init__(self) -> None:
        self.eval: dict = {}

    def eval_payload(self, cid: int) -> dict:
        return self.eval


_NODES: dict[tuple[str, str], Node] = {}
_RUN_DIRS: dict[str, str] = {}


def node_of(context: Context, args: list[str]) -> Node:
    """This process's :class:`Node` for the run (built once per process and node directory;
    the arguments are parsed once per process too: parsing costs more than a tiny client's round)."""
    key_args = json.dumps(args)
    if key_args not in _RUN_DIRS:
        from fedmoap.run.parse import parse_fit

        _RUN_DIRS[key_args] = str(parse_fit(["fit", *args])[1])
    root = Path(str(context.node_config.get(NODE_DIR) or Path(_RUN_DIRS[key_args]) / "nodes"))
    key = (key_args, str(root))
    if key not in _NODES:
        _NODES[key] = Node(args, root)
    return _NODES[key]


def client_app(args: list[str] | None = None, dp_norms: bool | None = None) -> ClientApp:
    """The ClientApp of a run: ``args`` are ``fedmoap fit``'s (None: the run config's :data:`SETTINGS`);
    ``dp_norms``: whether DP nodes send their norms (None: the run config's :data:`DP_NORMS`)."""
    app = ClientApp()

    def handle(message: Message, context: Context, step: str) -> Message:
        node = node_of(context, settings_of(context, args))
        if step == "train":
            send = dp_norms if dp_norms is not None else bool(context.run_config.get(DP_NORMS, False))
            return Message(node.train(context, message.content, send), reply_to=message)
        return Message(getattr(node, step)(context, message.content), reply_to=message)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        return Message(RecordDict({"client": ConfigRecord({"partition-id": partition})}), reply_to=message)

    @app.query("statistics")
    def statistics(message: Message, context: Context) -> Message:
        return handle(message, context, "statistics")

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle(message, context, "train")

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return handle(message, context, "evaluate")

    return app


SERVER_APP = server_app()
"""The ServerApp a Flower App names (``fedmoap.run.flower.app:SERVER_APP``): the run config's arguments."""
CLIENT_APP = client_app()
"""The ClientApp a Flower App names (``fedmoap.run.flower.app:CLIENT_APP``)."""
