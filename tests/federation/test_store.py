"""The on-disk client store: versioned state files, garbage collection that keeps exactly what the
kept checkpoints need, and resuming from the older of two kept checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fedmoap.errors import FedmoapError
from fedmoap.federation.store import ClientStore
from tests.worlds import fit_smoke, results


def state(value: float) -> dict:
    return {"params": {"ctx": torch.full((2, 3), value)}, "extra": {}, "optim": None}


def test_versions_index_and_garbage_collection(tmp_path):
    store = ClientStore(tmp_path)
    for t in (1, 3, 5):
        store.adopt({7: store.write(7, state(t), t)})
        store.collect_garbage([7], keep=2, t=t)
    # checkpoints 4 and 5 need versions 3 and 5
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == ["round_0003.pt", "round_0005.pt"]
    assert store.get(7)["params"]["ctx"][0, 0].item() == 5
    # a round abandoned after writing: its file exists but is not adopted, read or collected
    store.write(7, state(9), 9)
    assert store.get(7)["params"]["ctx"][0, 0].item() == 5
    store.collect_garbage([7], keep=2, t=5)
    assert (tmp_path / "7" / "round_0009.pt").exists() and (tmp_path / "7" / "round_0003.pt").exists()
    store.collect_garbage([7], keep=2, t=7)  # checkpoints 6 and 7 both need only version 5
    assert sorted(p.name for p in (tmp_path / "7").iterdir()) == ["round_0005.pt", "round_0009.pt"]
    assert store.get(8) is None and 8 not in store and len(store) == 1
    # the checkpointed index reloads; a corrupt file it names is refused at load time
    other = ClientStore(tmp_path)
    other.load_state_dict(store.state_dict())
    assert torch.equal(other.get(7)["params"]["ctx"], state(5)["params"]["ctx"])
    (tmp_path / "7" / "round_0005.pt").write_bytes(b"garbage")
    with pytest.raises(FedmoapError, match="round_0005.pt"):
        ClientStore(tmp_path).load_state_dict(store.state_dict())


def fit(run_dir: Path, cache: Path, rounds: int) -> dict:
    return results(
        fit_smoke(run_dir, "--fed.rounds", str(rounds), "--fed.keep_checkpoints", "2", cache=cache, threads=None)
    )


def test_run_keeps_exactly_the_files_kept_checkpoints_need_and_resumes_from_the_older(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    full = fit(run, cache, 5)
    ckpts = sorted((run / "checkpoints").glob("round_*.pt"))
    assert [p.name for p in ckpts] == ["round_0004.pt", "round_0005.pt"]
    needed = set()
    for p in ckpts:
        ckpt = torch.load(p, weights_only=True)
        assert set(ckpt["store"]) == {"index"}, "checkpoints hold the index, not the states"
        needed |= {run / "clients" / str(c) / f"round_{t:04d}.pt" for c, t in ckpt["store"]["index"].items()}
    assert set((run / "clients").glob("*/round_*.pt")) == needed
    assert any(int(p.stem.split("_")[1]) < 4 for p in needed), "the test should need an old version"

    ckpts[-1].unlink()  # resume from round 4, whose client states are partly older versions
    again = fit(run, cache, 5)
    assert [r["clients"] for r in again["rounds"]] == [r["clients"] for r in full["rounds"]]
    shutil.rmtree(run)
