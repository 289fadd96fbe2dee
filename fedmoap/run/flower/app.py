"""Any fedmoap method as a Flower ServerApp and ClientApp (Flower's Message API).

Both read the run config's typed keys (:data:`RUN_KEYS`: the config file, ``num-server-rounds``,
``method``, further overrides, where the run directory goes; ``flwr run --run-config`` overrides
them); the run directory is keyed by Flower's run id unless the run config names one.

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
node-local client store (``<node_config["fedmoap-dir"]>/<run id>``, else ``<run_dir>/nodes``); the node's
Context state keeps which round's version is current. Neither goes into a message: a train reply
carries the (released) upload, the training-set size and, under DP, the norms before clipping; an
evaluate reply carries (correct, total).
"""

from __future__ import annotations

import json
import logging
import shlex
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
    "CONFIG",
    "ROUNDS",
    "METHOD",
    "OVERRIDES",
    "RUN_DIR",
    "RUNS_DIR",
    "TRACE",
    "DP_NORMS",
    "RUN_KEYS",
    "STATISTICS",
    "NODE_DIR",
    "PARTITION",
    "run_settings",
    "run_dir_of",
    "settings_of",
    "FlowerTransport",
    "Trace",
    "read_trace",
    "server_app",
    "Node",
    "Downloaded",
    "node_root",
    "node_of",
    "client_app",
    "SERVER_APP",
    "CLIENT_APP",
]

CONFIG = "config"
"""The run config key (str) of the run's YAML config file; a relative path is relative to the app's
directory (a written app holds its config file); empty: ``fedmoap fit``'s defaults."""
ROUNDS = "num-server-rounds"
"""The run config key (int >= 1) of the number of rounds (``fed.rounds``); absent: the config file's."""
METHOD = "method"
"""The run config key (str) of the method (``--method``: a short name or a class path); absent or
empty: the config file's."""
OVERRIDES = "overrides"
"""The run config key (str) of further ``fedmoap fit`` overrides, space-separated
(``--section.key value ...``), applied after the config file and before the keys above."""
RUN_DIR = "run-dir"
"""The run config key (str) of the run directory; empty (the default): ``<runs-dir>/<Flower run id>``,
so a second submission of the app is a new run. A run directory that already holds a run is refused."""
RUNS_DIR = "runs-dir"
"""The run config key (str, default ``runs``) of the directory that holds one run directory per Flower
run (relative: to the working directory of the process running the ServerApp)."""
TRACE = "trace-dir"
"""The run config key (str, default empty: off) of a directory where the ServerApp saves every
message it sends and receives (``torch.save``: time, direction, type, group and records; tests and
benchmarks read it)."""
DP_NORMS = "fedmoap-dp-norms"
"""The run config key (bool, default false) that lets a DP node also send its norms before clipping.
No DP mechanism covers them; only results.json's ``dp_median_norm`` and ``dp_clipped_fraction``
need them. ``fedmoap flower`` turns it on in simulation (same results.json as ``fit``); a written
Flower App has it off (those two fields are then empty)."""
RUN_KEYS = {
    CONFIG: str,
    ROUNDS: int,
    METHOD: str,
    OVERRIDES: str,
    RUN_DIR: str,
    RUNS_DIR: str,
    TRACE: str,
    DP_NORMS: bool,
}
"""Every run config key a fedmoap app reads, with its type."""
STATISTICS = f"{MessageType.QUERY}.statistics"
"""The message type of a seed-method's statistics pass
(:meth:`~fedmoap.federation.rounds.Federation.client_statistics`)."""
NODE_DIR = "fedmoap-dir"
"""The node config key of a SuperNode's own directory: its client stores live under
``<fedmoap-dir>/<Flower run id>``; absent: ``<run directory>/nodes``."""
PARTITION = "partition-id"
"""The node config key of the node's client id (0 .. ``data.num_clients`` - 1)."""


def run_settings(run_config: dict, app_dir: Path | None = None) -> dict[str, Any]:
    """The run config's fedmoap keys, each checked against its type (one-line
    :class:`~fedmoap.errors.FedmoapError` naming the key): unknown keys, a wrong type, a
    ``num-server-rounds`` below 1, a config file that is not there (none: ``fit``'s defaults)."""
    unknown = sorted(set(run_config) - set(RUN_KEYS))
    if unknown:
        raise FedmoapError(f"run config: unknown key {unknown[0]!r} (fedmoap reads {', '.join(RUN_KEYS)})")
    out: dict[str, Any] = {}
    for key, kind in RUN_KEYS.items():
        if key not in run_config:
            continue
        value = run_config[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise FedmoapError(f"run config: {key} {value!r} is not an integer")
        if kind is not int and not isinstance(value, kind):
            raise FedmoapError(f"run config: {key} {value!r} is not a {kind.__name__}")
        out[key] = value
    if ROUNDS in out and out[ROUNDS] < 1:
        raise FedmoapError(f"run config: {ROUNDS} {out[ROUNDS]} must be >= 1")
    if out.get(CONFIG):
        config = Path(out[CONFIG]).expanduser()
        if not config.is_absolute() and app_dir is not None:
            config = app_dir / config
        if not config.is_file():
            raise FedmoapError(f"run config: {CONFIG} {out[CONFIG]!r}: no such file ({config})")
        out[CONFIG] = str(config)
    try:
        out[OVERRIDES] = shlex.split(out.get(OVERRIDES, ""))
    except ValueError as exc:
        raise FedmoapError(f"run config: {OVERRIDES} {run_config[OVERRIDES]!r}: {exc}") from None
    return out


def run_dir_of(settings: dict[str, Any], run_id: int) -> Path:
    """The run directory: ``run-dir``, else ``<runs-dir>/<run_id>``."""
    if settings.get(RUN_DIR):
        return Path(settings[RUN_DIR]).expanduser().absolute()
    return (Path(settings.get(RUNS_DIR) or "runs").expanduser() / str(run_id)).absolute()


def settings_of(context: Context, app_dir: Path | None = None) -> list[str]:
    """``fedmoap fit``'s arguments for this Flower run: the run config's keys (:data:`RUN_KEYS`; a
    relative config file is relative to ``app_dir``), the run directory keyed by the run id."""
    s = run_settings(dict(context.run_config), app_dir)
    args = [*(["--config", s[CONFIG]] if s.get(CONFIG) else []), *s[OVERRIDES]]
    if ROUNDS in s:
        args += ["--fed.rounds", str(s[ROUNDS])]
    if s.get(METHOD):
        args += ["--method", s[METHOD]]
    return [*args, "--run_dir", str(run_dir_of(s, context.run_id))]


# ------------------------------------------------------------------------------------ server
class FlowerTransport(Transport):
    """A round's training and evaluation as Flower messages, one SuperNode per client.

    ``watch(direction, message)`` (tests) sees every message sent (``"out"``) and received
    (``"in"``) by the server."""

    engine = "flower"

    def __init__(
        self,
        grid: Grid,
        wait_s: float = 600.0,
        watch: Callable[[str, Message], None] | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.grid, self.wait_s, self.poll_s = grid, wait_s, poll_s
        self.watch = watch or (lambda d, m: None)
        self.nodes: dict[int, int] = {}
        """client id -> node id, from each node's answer to a query."""

    def _exchange(self, messages: list[Message]) -> dict[int, Message]:
        """Push ``messages``, then pull the replies every ``poll_s`` seconds (Flower's own
        ``send_and_receive`` on a SuperLink pulls every 3 s) until all are in; one line if a node's
        reply is an error or ``wait_s`` passes without some."""
        for m in messages:
            self.watch("out", m)
        pending = set(self.grid.push_messages(messages))
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + self.wait_s
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                self.watch("in", reply)
                if reply.has_error():
                    raise FedmoapError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                pending.discard(reply.metadata.reply_to_message_id)
                replies[reply.metadata.src_node_id] = reply
            if pending:
                if time.monotonic() > deadline:
                    raise FedmoapError(
                        f"{len(pending)} of {len(messages)} nodes did not reply within {self.wait_s:.0f} s"
                    )
                time.sleep(self.poll_s)
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


class Trace:
    """Every message the ServerApp sends (``"out"``) and receives (``"in"``), saved one file each
    in ``root`` (``torch.save`` of time, direction, type, group and records: an
    :class:`~flwr.app.ArrayRecord` as its tensors, a config or metric record as a dict)."""

    def __init__(self, root: Path) -> None:
        self.root, self.n = root, 0
        root.mkdir(parents=True, exist_ok=True)

    def __call__(self, direction: str, message: Message) -> None:
        import torch
        from flwr.app import ArrayRecord

        if message.has_error():
            records = {"error": ("Error", {"code": message.error.code, "reason": message.error.reason})}
        else:
            records = {
                name: from_record(r) if isinstance(r, ArrayRecord) else (type(r).__name__, dict(r))
                for name, r in message.content.items()
            }
        entry = {
            "time": time.perf_counter(),
            "direction": direction,
            "type": message.metadata.message_type,
            "group": message.metadata.group_id,
            "records": records,
        }
        torch.save(entry, self.root / f"{self.n:06d}-{direction}.pt")
        self.n += 1


def read_trace(root: Path) -> list[dict]:
    """A :class:`Trace`'s messages, in order."""
    import torch

    return [torch.load(p, weights_only=False) for p in sorted(Path(root).glob("*.pt"))]


def server_app(app_dir: Path | None = None) -> ServerApp:
    """The ServerApp of a fedmoap Flower App: ``fedmoap fit``'s loop on the run config's keys
        (:data:`RUN_KEYS`; a relative config file is relative to ``app_dir``, else to the working
        directory). A bad key or a run directory that holds a run stops it with one logged line
    (``fedmoap: ...``) and the run fails with that message as its details."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from flwr.common.logger import log

        from fedmoap.run.fit import fit
        from fedmoap.run.flower.checks import checked_config

        try:
            cfg, run_dir = checked_config(settings_of(context, app_dir))
        except FedmoapError as exc:
            log(logging.ERROR, "fedmoap: %s", exc)  # the one line `flwr run --stream` shows
            raise
        trace = str(context.run_config.get(TRACE) or "")
        transport = FlowerTransport(grid, watch=Trace(Path(trace)) if trace else None)
        transport.run_id = str(context.run_id)
        fit(cfg, run_dir, progress=False, transport=transport)

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


def node_root(context: Context, args: list[str]) -> Path:
    """Where this node keeps its client store for the run: ``<fedmoap-dir>/<run id>`` (node config
    :data:`NODE_DIR`), else ``<run directory>/nodes``."""
    if context.node_config.get(NODE_DIR):
        return Path(str(context.node_config[NODE_DIR])).expanduser().absolute() / str(context.run_id)
    return Path(args[args.index("--run_dir") + 1]) / "nodes"


def node_of(context: Context, args: list[str]) -> Node:
    """This process's :class:`Node` for the run (built once per process, run arguments and node
    directory; those of other runs dropped), the node's partition-id checked (one-line error
    naming the node config)."""
    raw = context.node_config.get(PARTITION)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise FedmoapError(f"node config: {PARTITION} {raw!r} is not a client id (an integer >= 0)")
    root = node_root(context, args)
    key = (json.dumps(args), str(root))
    if key not in _NODES:
        for old in [k for k in _NODES if k[0] != key[0]]:  # another run's: a long-lived process serves many
            del _NODES[old]
        _NODES[key] = Node(args, root)
    return _NODES[key]


def client_app(app_dir: Path | None = None) -> ClientApp:
    """The ClientApp of a fedmoap Flower App: one client per SuperNode (node config
    :data:`PARTITION`), the run config's keys as :func:`server_app` reads them."""
    app = ClientApp()

    def handle(message: Message, context: Context, step: str) -> Message:
        node = node_of(context, settings_of(context, app_dir))
        if step == "train":
            send = bool(context.run_config.get(DP_NORMS, False))
            return Message(node.train(context, message.content, send), reply_to=message)
        return Message(getattr(node, step)(context, message.content), reply_to=message)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        partition = context.node_config.get(PARTITION)
        if isinstance(partition, bool) or not isinstance(partition, int):
            raise FedmoapError(f"node config: {PARTITION} {partition!r} is not a client id (an integer >= 0)")
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
"""The ServerApp ``fedmoap.run.flower.app:SERVER_APP`` (a relative config file: to the working directory)."""
CLIENT_APP = client_app()
"""The ClientApp ``fedmoap.run.flower.app:CLIENT_APP``."""
