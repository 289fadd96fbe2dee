"""Every method on Flower: a Flower simulation through ``flwr run`` (Ray backend, one SuperNode per
client) gives the numbers ``fedmoap fit`` gives on the same config and seed, bit for bit; no message carries a
client's private state; the DP norms stay on the node unless the run lets them out.

flwr is in the ``test`` extra: without it these tests fail (they do not skip)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import MessageType

from fedmoap.run.cli import main
from fedmoap.run.flower.app import read_trace
from fedmoap.run.flower.run import simulate
from tests.run.flower import SMOKE

DP = ["--dp.mode", "client_upload", "--dp.clip", "0.5", "--dp.noise_multiplier", "1.0"]
TIMING = ("seconds", "setup_s", "round_s")
NUMBERS = {"round", "client", "noise-multiplier", "num-examples", "dp-norms", "correct", "total", "partition-id"}
"""Every non-tensor entry a message may carry."""


def rounds(run_dir: Path) -> list[dict]:
    res = json.loads((run_dir / "results.json").read_text())
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in res["rounds"]]


def last_checkpoint(run_dir: Path) -> dict:
    path = sorted((run_dir / "checkpoints").glob("round_*.pt"))[-1]
    return torch.load(path, map_location="cpu", weights_only=True)


def fit_clients(run_dir: Path) -> dict[int, dict]:
    index = last_checkpoint(run_dir)["store"]["index"]
    return {
        int(c): torch.load(run_dir / "clients" / str(c) / f"round_{int(t):04d}.pt", weights_only=True)
        for c, t in index.items()
    }


def node_clients(run_dir: Path) -> dict[int, dict]:
    """Each node's stored client state (one version per node)."""
    out: dict[int, dict] = {}
    root = run_dir / "nodes" / "clients"
    for folder in root.iterdir() if root.exists() else []:  # none: nothing trained (zero-shot)
        (path,) = folder.glob("round_*.pt")
        out[int(folder.name)] = torch.load(path, weights_only=True)
    return out


def tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def both(tmp_path: Path, args: list[str], trace: Path | None = None) -> tuple[Path, Path]:
    fit_dir, flower_dir = tmp_path / "fit", tmp_path / "flower"
    assert main(["fit", *args, "--run_dir", str(fit_dir)]) == 0
    simulate([*args, "--run_dir", str(flower_dir)], num_cpus=1, client_cpus=1, trace=trace)
    return fit_dir, flower_dir


def assert_same_run(fit_dir: Path, flower_dir: Path) -> None:
    """Per-client accuracies (all of results.json's rounds but timings), the server's final state
    and every client's kept state: identical; each results.json names its engine."""
    assert rounds(flower_dir) == rounds(fit_dir)
    fit_res, fl_res = (json.loads((d / "results.json").read_text()) for d in (fit_dir, flower_dir))
    assert fl_res.get("privacy") == fit_res.get("privacy")
    assert (fit_res["engine"], fl_res["engine"]) == ("fit", "flower")  # results.json says what ran it
    assert "engine_run_id" not in fit_res and int(fl_res["engine_run_id"]) > 0  # and Flower's run id
    assert_same(last_checkpoint(flower_dir)["server"], last_checkpoint(fit_dir)["server"], "server")
    assert_same(node_clients(flower_dir), fit_clients(fit_dir), "clients")


RECORD_SGD = ["--dp.mode", "record_sgd", "--dp.clip", "1.0", "--dp.noise_multiplier", "1.0"]
ROUNDS_LR = ["--train.lr_schedule", "rounds", "--train.lr_rounds", "2"]


@pytest.mark.parametrize(
    "method, extra",
    [
        ("promptfl", []),
        ("coop", []),
        ("fedotp", []),
        ("promptfl", RECORD_SGD),
        ("pepfedpt", []),
        ("pfedmoap", [*DP, *ROUNDS_LR]),
    ],
    ids=["promptfl", "coop", "fedotp", "dp-sgd", "statistics", "client-dp-rounds-lr"],
)
def test_flower_simulation_gives_fits_numbers(method, extra, tmp_path, cache, capsys):
    """(pFedMoAP with client-level DP: the message-inspection test below. PEP-FedPT: a
    seed-method, whose clients send statistics in a set-up pass and after every round.) Flower's
    own output (``flwr run --stream``: the SuperLink's and the apps' logs) has no deprecation."""
    fit_dir, flower_dir = both(tmp_path, [*SMOKE, *cache, "--method", method, *extra])
    assert_same_run(fit_dir, flower_dir)
    out = capsys.readouterr()
    assert "Successfully started run" in out.out and "deprecat" not in (out.out + out.err).lower()
    assert main(["report", str(flower_dir)]) == 0  # fedmoap report reads a Flower run


def test_pfedmoap_under_dp_on_flower_same_numbers_and_no_private_state_in_any_message(tmp_path, cache):
    """pFedMoAP (per-client experts down, a private gating network) with client_upload DP: same
    numbers as fit; every message the server sends or receives holds only payload and upload
    tensors and round numbers, none equal to a tensor that only a client keeps."""
    fit_dir, flower_dir = both(tmp_path, [*SMOKE, *cache, "--method", "pfedmoap", *DP], tmp_path / "trace")
    seen = [(m["direction"], m["type"], m["records"]) for m in read_trace(tmp_path / "trace")]
    assert_same_run(fit_dir, flower_dir)
    clients = node_clients(flower_dir)
    private = [p for s in clients.values() for name, p in s["params"].items() if name != "ctx"]
    private += [t for s in clients.values() for t in tensors(s["optim"])]
    assert any("gating" in n for s in clients.values() for n in s["params"])
    assert len(private) > 10
    kinds = {(d, k) for d, k, _ in seen}
    assert {
        ("out", MessageType.TRAIN),
        ("in", MessageType.TRAIN),
        ("out", MessageType.EVALUATE),
        ("in", MessageType.EVALUATE),
    } <= kinds
    keys = set()
    for direction, kind, records in seen:
        for name, record in records.items():
            if isinstance(record, dict):  # an ArrayRecord, as its tensors
                keys |= set(record)
                for t in record.values():
                    assert not any(t.shape == p.shape and torch.equal(t, p) for p in private), (direction, kind, name)
            else:
                kind_of, values = record
                assert kind_of in ("ConfigRecord", "MetricRecord") and set(values) <= NUMBERS, (name, record)
    assert keys == {"prompt", "experts"}  # the global prompt and experts down, the released prompt up
    ups = [r["upload"] for d, k, r in seen if d == "in" and k == MessageType.TRAIN]
    assert ups and all(set(u) == {"prompt"} for u in ups)


def test_a_node_builds_once_and_re_points_its_one_store_per_message(tmp_path, cache):
    """A node's federation holds the server's side as messages bring it and one client store under
    the node's directory; each message resets that store's index to the node's Context state."""
    from types import SimpleNamespace

    from fedmoap.run.flower.app import Downloaded, Node

    node = Node([*SMOKE, *cache, "--method", "coop", "--run_dir", str(tmp_path / "run")], tmp_path / "node")
    fed = node.federation
    server, store = fed.server, fed.store
    assert isinstance(server, Downloaded) and store.root == tmp_path / "node" / "clients"
    for cid, state, index in (
        (4, {"fedmoap": {"round": 3}}, {4: 3}),
        (2, {}, {}),
        (4, {"fedmoap": {"round": 5}}, {4: 5}),
    ):
        context = SimpleNamespace(node_config={"partition-id": cid}, state=state)
        assert node.client(context, {"config": {"client": cid}}) == cid
        assert fed.server is server and fed.store is store and store.state_dict() == {"index": index}


def test_dp_norms_stay_on_the_node_unless_the_run_lets_them_out(tmp_path, cache):
    """With ``dp_norms`` off (a written Flower App's default) no train reply carries a norm: the
    accuracies and the accountant's numbers are fit's; only the two norm diagnostics are empty."""
    args = [*SMOKE, *cache, "--method", "promptfl", *RECORD_SGD]
    assert main(["fit", *args, "--run_dir", str(tmp_path / "fit")]) == 0
    simulate(
        [*args, "--run_dir", str(tmp_path / "flower")], num_cpus=1, client_cpus=1, trace=tmp_path / "t", dp_norms=False
    )
    seen = [m["records"] for m in read_trace(tmp_path / "t") if m["direction"] == "in"]

    def without_norms(run_dir: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in NORM_FIELDS} for r in rounds(run_dir)]

    assert without_norms(tmp_path / "flower") == without_norms(tmp_path / "fit")
    metrics = [r["metrics"][1] for r in seen if "metrics" in r]
    assert metrics and not any("dp-norms" in m for m in metrics)
    fit_last, fl_last = (rounds(tmp_path / d)[-1] for d in ("fit", "flower"))
    assert fit_last["dp_median_norm"] is not None and fl_last["dp_median_norm"] is None


NORM_FIELDS = ("dp_median_norm", "dp_clipped_fraction")
