"""Whole runs of ``fedmoap fit`` on ``configs/smoke.yaml``: the results contract, determinism,
resume (including after a real SIGKILL), extension, refusal of bad inputs, the methods' traffic,
and split reuse.

Runs are shared through module-scoped fixtures and made in-process with ``fedmoap.run.cli.main``
where possible (one Python import instead of one per run); a subprocess is used where a real
process matters (exit code, stderr, being killed). Every run uses a temporary feature cache.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from datasets import ClassLabel, Features, Image

import fedmoap
from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.distributed import Comm
from fedmoap.errors import FedmoapError
from fedmoap.run.cli import main
from fedmoap.run.fit import preempted
from tests.worlds import PIXEL, saved_dataset, smoke_fit

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
SMOKE_CFG = yaml.safe_load(SMOKE.read_text())
NUM_CLIENTS = SMOKE_CFG["data"]["num_clients"]
N_CTX = SMOKE_CFG["method"]["init_args"]["n_ctx"]
NUM_EXPERTS = SMOKE_CFG["method"]["init_args"]["num_experts"]
_MODEL_JSON = Path(fedmoap.__file__).parent / "backbones" / "model_configs" / f"{SMOKE_CFG['model']['arch']}.json"
CTX_WIDTH = json.loads(_MODEL_JSON.read_text())["text_cfg"]["width"]
PROMPT_BYTES = N_CTX * CTX_WIDTH * 4  # one float32 context
ERROR_LINE = re.compile(r"(?<![A-Za-z])error:")


# ---------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Feature cache shared by every run of this module (never the user's)."""
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def fit_args(run_dir: Path, cache: Path, *extra: str, config: Path = SMOKE) -> list[str]:
    # One torch thread everywhere: runs compared bit for bit must reduce in the same order, and an
    # earlier in-process test may have changed this process's thread count.
    return [
        "fit",
        "--config",
        str(config),
        "--fabric.threads",
        "1",
        *extra,
        "--run_dir",
        str(run_dir),
        "--data.feature_cache",
        str(cache),
        "--progress",
        "false",
    ]


def fit_in_process(run_dir: Path, cache: Path, *extra: str) -> dict:
    """Run ``fedmoap fit`` in this process; returns the parsed results.json."""
    rc = main(fit_args(run_dir, cache, *extra))
    assert rc == 0, f"fedmoap fit {' '.join(extra)} on {run_dir} exited with {rc}"
    return read_results(run_dir)


def fit_subprocess_cmd(run_dir: Path, cache: Path, *extra: str, config: Path = SMOKE) -> list[str]:
    return [sys.executable, "-m", "fedmoap", *fit_args(run_dir, cache, *extra, config=config)]


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` (relative path -> bytes)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("round_*.pt"))


@pytest.fixture
def trained_rounds(monkeypatch) -> list[int]:
    """The rounds that in-process runs of the test actually train (in order)."""
    from fedmoap.federation.rounds import Federation

    seen: list[int] = []
    original = Federation.run_round

    def recording(self, t, *args, **kwargs):
        seen.append(t)
        return original(self, t, *args, **kwargs)

    monkeypatch.setattr(Federation, "run_round", recording)
    return seen


def assert_same_state(a, b, where: str = "") -> None:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {where}: {set(a) ^ set(b)}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_final_checkpoint(run_dir: Path, reference: Path) -> None:
    """The newest checkpoints (server, client store with optimiser states, history) are equal."""
    import torch

    mine, ref = checkpoints(run_dir)[-1], checkpoints(reference)[-1]
    assert mine.name == ref.name
    assert_same_state(torch.load(mine, weights_only=True), torch.load(ref, weights_only=True), mine.name)


def layout(run_dir: Path) -> list[str]:
    """Every path under ``run_dir``, TensorBoard event files by kind (their names hold a time
    and a pid, and a resumed run writes one more)."""
    return sorted(
        {
            re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", str(p.relative_to(run_dir)))
            for p in run_dir.rglob("*")
        }
    )


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)  # copy2: contents and mtimes
    return dst


# ---------------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def run3(runs_root, cache_dir) -> Path:
    """The reference: an uninterrupted smoke run (pfedmoap, 3 rounds, participation 0.5, seed 0)."""
    d = runs_root / "run3"
    fit_in_process(d, cache_dir)
    return d


@pytest.fixture(scope="module")
def base2(runs_root, cache_dir) -> Path:
    """A finished 2-round run (seed 0). Never modified: tests work on copies."""
    d = runs_root / "base2"
    fit_in_process(d, cache_dir, "--fed.rounds", "2")
    return d


# ---------------------------------------------------------------------------------- 1. contract
def test_contract_files_results_and_tensorboard(run3):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ("config.yaml", "split.json", "results.json"):
        assert (run3 / name).is_file(), f"{name} missing from the run dir"

    stored = yaml.safe_load((run3 / "config.yaml").read_text())
    assert stored["method"]["class_path"] == "fedmoap.methods.pfedmoap.PFedMoAP" and stored["seed"] == 0
    assert "lam" in stored["method"]["init_args"], "config.yaml must hold the chosen method's knobs"
    assert stored["fed"]["rounds"] == 3 and stored["data"]["num_clients"] == NUM_CLIENTS

    split = json.loads((run3 / "split.json").read_text())
    assert len(split["clients"]) == NUM_CLIENTS
    test_sizes = {str(c["id"]): len(c["test"]) for c in split["clients"]}

    res = read_results(run3)
    rounds = res["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert isinstance(r["round"], int)
        assert set(r["clients"]) == {str(i) for i in range(NUM_CLIENTS)}
        accs = []
        for cid, entry in r["clients"].items():
            assert isinstance(entry["acc"], float) and 0.0 <= entry["acc"] <= 1.0, (cid, entry)
            assert isinstance(entry["n"], int) and entry["n"] > 0
            assert entry["n"] == test_sizes[cid], "n must be the client's test-set size"
            accs.append(entry["acc"])
        mean = sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs))
        assert r["mean_acc"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
        assert r["std_acc"] == pytest.approx(std, rel=1e-9, abs=1e-12)
        assert 0.0 <= r["mean_acc"] <= 1.0
        assert isinstance(r["bytes_up"], int) and r["bytes_up"] >= 0
        assert isinstance(r["bytes_down"], int) and r["bytes_down"] >= 0

    s = res["summary"]
    means = [r["mean_acc"] for r in rounds]
    best = max(range(len(means)), key=lambda i: (means[i], -i))
    assert s["best_round"] == rounds[best]["round"]
    assert s["best_mean_acc"] == means[best]
    assert s["last5_mean_acc"] == pytest.approx(sum(means[-5:]) / len(means[-5:]), rel=1e-12)

    event_files = list(run3.rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file under the run dir"
    tags_seen: dict[str, dict[int, float]] = {}
    for folder in {p.parent for p in event_files}:
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags_seen.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    expected = {f"client/{i}/acc" for i in range(NUM_CLIENTS)} | {"mean/acc"}
    assert expected <= set(tags_seen), f"missing scalar tags: {expected - set(tags_seen)}"
    for tag in expected:
        assert sorted(tags_seen[tag]) == [1, 2, 3], f"{tag}: steps {sorted(tags_seen[tag])}"
    for r in rounds:
        assert tags_seen["mean/acc"][r["round"]] == pytest.approx(r["mean_acc"], rel=1e-6)
        for cid, entry in r["clients"].items():
            assert tags_seen[f"client/{cid}/acc"][r["round"]] == pytest.approx(entry["acc"], rel=1e-6)


# ---------------------------------------------------------------------------------- 2. seeds
def test_same_seed_same_results_other_seed_differs(run3, base2, runs_root, cache_dir):
    again = fit_in_process(runs_root / "run3_again", cache_dir)
    assert again["rounds"] == read_results(run3)["rounds"]
    assert_same_final_checkpoint(runs_root / "run3_again", run3)
    # fed.rounds does not change the numbers: a fresh 2-round run is the 3-round run's prefix
    assert read_results(base2)["rounds"] == read_results(run3)["rounds"][:2]

    # (another seed also means other random tower weights, so new features: keep it to 1 round)
    other = fit_in_process(runs_root / "seed1", cache_dir, "--seed", "1", "--fed.rounds", "1")
    ref = read_results(run3)["rounds"][:1]
    assert other["rounds"] != ref
    accs = lambda rs: [[c["acc"] for c in r["clients"].values()] for r in rs]  # noqa: E731
    assert accs(other["rounds"]) != accs(ref), "another seed must give other accuracies"
    assert (runs_root / "seed1" / "split.json").read_bytes() != (run3 / "split.json").read_bytes()


# ---------------------------------------------------------------------------------- 3. re-run
def test_rerun_on_finished_run_does_nothing(run3, runs_root, cache_dir, monkeypatch):
    from fedmoap.federation.rounds import Federation

    d = copy_run(run3, runs_root / "rerun")
    before_ckpt = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in checkpoints(d)}
    before_split = (d / "split.json").read_bytes()
    before_results = (d / "results.json").read_bytes()
    assert before_ckpt

    def no_training(self, t, progress=True):
        raise AssertionError(f"round {t} was run again on a finished run")

    monkeypatch.setattr(Federation, "run_round", no_training)
    res = fit_in_process(d, cache_dir)
    assert res["rounds"] == read_results(run3)["rounds"]
    assert res["summary"] == read_results(run3)["summary"]
    assert (d / "results.json").read_bytes() == before_results
    after_ckpt = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in checkpoints(d)}
    assert after_ckpt == before_ckpt, "checkpoints were rewritten"
    assert (d / "split.json").read_bytes() == before_split


# ---------------------------------------------------------------------------------- 4. resume
def test_resume_after_stopping_at_round_1(run3, runs_root, cache_dir, trained_rounds):
    """The state a kill after round 1 leaves (round 1 checkpointed), made deterministically."""
    d = runs_root / "stopped_at_1"
    fit_in_process(d, cache_dir, "--fed.rounds", "1")
    assert [p.name for p in checkpoints(d)] == ["round_0001.pt"]
    trained_rounds.clear()
    res = fit_in_process(d, cache_dir, "--fed.rounds", "3")
    assert trained_rounds == [2, 3], "the resumed run must continue after round 1"
    assert res["rounds"] == read_results(run3)["rounds"]
    assert_same_final_checkpoint(d, run3)


def test_resume_after_sigkill(run3, runs_root, cache_dir, tmp_path, trained_rounds):
    d = runs_root / "killed"
    cmd = fit_subprocess_cmd(d, cache_dir, "--fed.rounds", "3")
    first = d / "checkpoints" / "round_0001.pt"
    with open(tmp_path / "out.txt", "wb") as out, open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            while not first.exists():
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    pytest.fail("no round_0001.pt after 300 s")
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert first.exists() or proc.returncode == -signal.SIGKILL, (
        f"the run failed before round 1: {(tmp_path / 'err.txt').read_text()}"
    )
    assert proc.returncode in (0, -signal.SIGKILL), (tmp_path / "err.txt").read_text()
    # If the kill came late (round 3 done, or the run finished), roll back to round 2 as a kill
    # one round earlier would have left it, so that the resume below always trains.
    done = [int(p.stem.split("_")[1]) for p in checkpoints(d)]
    assert done, "the killed run left no checkpoint"
    if max(done) == 3:
        (d / "checkpoints" / "round_0003.pt").unlink()
        results = d / "results.json"
        if results.exists():
            res = json.loads(results.read_text())
            res["rounds"] = [r for r in res["rounds"] if r["round"] < 3]
            results.write_text(json.dumps(res))
    assert max(p.stat().st_size for p in checkpoints(d)) > 0

    last_done = max(int(p.stem.split("_")[1]) for p in checkpoints(d))
    res = fit_in_process(d, cache_dir, "--fed.rounds", "3")
    assert trained_rounds == list(range(last_done + 1, 4)), "resume must start after the last checkpoint"
    assert res["rounds"] == read_results(run3)["rounds"]
    assert_same_final_checkpoint(d, run3)
    assert layout(d) == layout(run3), "the resumed run's directory differs from the uninterrupted one's"
    assert (d / "results.json").read_bytes() == (run3 / "results.json").read_bytes()


# ---------------------------------------------------------------------------------- 5. extend
def test_build_gives_the_federation_at_the_newest_checkpoint_with_the_transport_passed_in(base2, runs_root, cache_dir):
    import torch

    from fedmoap.federation.rounds import InProcess
    from fedmoap.run.fit import build, setup
    from fedmoap.run.parse import parse_fit

    run_dir = copy_run(base2, runs_root / "built")
    cfg, _, _ = parse_fit(fit_args(run_dir, cache_dir, "--fed.rounds", "2"))
    ckpt = torch.load(checkpoints(run_dir)[-1], weights_only=True)
    transport, s = InProcess(), setup(cfg, run_dir)
    try:
        federation, _, history, _ = build(s, None, transport)
    finally:
        s.stop.close()
    assert federation.transport is transport and federation.store.root == run_dir / "clients"
    assert_same_state(federation.server.state_dict(), ckpt["server"])
    assert federation.store.state_dict() == ckpt["store"] and history == ckpt["history"]
    with pytest.raises(AttributeError, match="fixed when it is built"):
        federation.transport = InProcess()


def test_extend_finished_run(run3, base2, runs_root, cache_dir, trained_rounds):
    d = copy_run(base2, runs_root / "extended")
    res = fit_in_process(d, cache_dir, "--fed.rounds", "3")
    assert trained_rounds == [3]
    assert res["rounds"] == read_results(run3)["rounds"]
    assert_same_final_checkpoint(d, run3)
    assert res["summary"] == read_results(run3)["summary"]
    assert yaml.safe_load((d / "config.yaml").read_text())["fed"]["rounds"] == 3


# ---------------------------------------------------------------------------------- 6. bad inputs
BAD_YAML_KEY = "roundz"

# name -> (extra arguments, run dir kind, words the error message must contain)
#   run dir kind: "existing" = a copy of a finished 2-round run; "corrupt" = the same with its
#   newest checkpoint overwritten by garbage; "corrupt_state" = the same with a client's newest
#   state file (which the newest checkpoint needs) overwritten; "fresh" = a path that does not exist yet.
BAD_CASES = {  # as real processes; tests/e2e/test_bad_inputs.py has the whole matrix in-process
    "misspelt_yaml_key": ([], "existing", ["roundz"]),
    "missing_dataset": (["--data.source", "/nonexistent/dir"], "fresh", ["data.source", "/nonexistent/dir"]),
    "corrupt_client_state": (["--fed.rounds", "3"], "corrupt_state", ["{newest_checkpoint}"]),
}
GARBAGE = b"this is not a torch checkpoint\x00\xff" * 8


@pytest.fixture(scope="module")
def bad_runs(base2, runs_root, cache_dir, tmp_path_factory):
    """Run every bad-input case as a real process (two at a time); keep what each left."""
    root = tmp_path_factory.mktemp("bad")
    bad_yaml = root / "misspelt.yaml"
    text = SMOKE.read_text()
    assert "  rounds: 3" in text
    bad_yaml.write_text(text.replace("  rounds: 3", f"  {BAD_YAML_KEY}: 3"))

    prepared = {}
    for name, (extra, kind, words) in BAD_CASES.items():
        run_dir = root / name
        newest = None
        if kind in ("existing", "corrupt", "corrupt_state"):
            copy_run(base2, run_dir)
        if kind == "corrupt":
            newest = checkpoints(run_dir)[-1]
            newest.write_bytes(GARBAGE)
        if kind == "corrupt_state":  # the newest state file of the first client that has one
            newest = sorted(sorted((run_dir / "clients").glob("*/round_*.pt"))[0].parent.iterdir())[-1]
            newest.write_bytes(GARBAGE)
        config = bad_yaml if name == "misspelt_yaml_key" else SMOKE
        cmd = fit_subprocess_cmd(run_dir, cache_dir, *extra, config=config)
        words = [w.replace("{newest_checkpoint}", str(newest)) for w in words]
        before = snapshot(run_dir) if run_dir.exists() else None
        prepared[name] = (cmd, run_dir, words, before, newest)

    def run(name):
        cmd = prepared[name][0]
        return name, subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(run, prepared))
    return {name: (done[name], *prepared[name][1:]) for name in prepared}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_fails_cleanly(bad_runs, case):
    proc, run_dir, words, before, newest = bad_runs[case]
    err = proc.stderr
    assert proc.returncode != 0, f"exit code 0 for {case}; stdout: {proc.stdout}"
    assert "Traceback" not in err, err
    errors = ERROR_LINE.findall(err)
    assert len(errors) == 1, f"expected one error message, got {len(errors)}:\n{err}"
    message = err[ERROR_LINE.search(err).start() :]
    for word in words:
        assert word in message, f"the error does not name {word!r}: {message}"
    if before is None:
        assert not run_dir.exists(), f"{case}: a failed run created {run_dir}"
    else:
        assert snapshot(run_dir) == before, f"{case}: the run dir was changed"
    if newest is not None:
        assert newest.read_bytes() == GARBAGE


# ---------------------------------------------------------------------------------- 7. methods
@pytest.fixture(scope="module")
def method_runs(runs_root, cache_dir) -> dict[str, dict]:
    out = {}
    for method in ("zeroshot", "coop"):
        out[method] = fit_in_process(runs_root / f"m_{method}", cache_dir, "--method", method, "--fed.rounds", "1")
    # the federated methods: 2 rounds, everyone participates (so round 2 has returning clients)
    for method in ("promptfl", "pfedmoap"):
        out[method] = fit_in_process(
            runs_root / f"m_{method}", cache_dir, "--method", method, "--fed.rounds", "2", "--fed.participation", "1.0"
        )
    return out


@pytest.mark.parametrize("method", ["zeroshot", "coop", "promptfl", "pfedmoap"])
def test_method_runs_and_writes_results(method_runs, runs_root, method):
    res = method_runs[method]
    assert (runs_root / f"m_{method}" / "results.json").is_file()
    assert res["rounds"] and res["rounds"][0]["round"] == 1
    for r in res["rounds"]:
        assert set(r["clients"]) == {str(i) for i in range(NUM_CLIENTS)}
        assert all(0.0 <= c["acc"] <= 1.0 for c in r["clients"].values())


@pytest.mark.parametrize("method", ["zeroshot", "coop"])
def test_local_methods_send_nothing(method_runs, method):
    for r in method_runs[method]["rounds"]:
        assert r["bytes_up"] == 0 and r["bytes_down"] == 0, r


def test_promptfl_traffic_is_one_prompt_each_way(method_runs):
    for r in method_runs["promptfl"]["rounds"]:
        assert r["participants"] == list(range(NUM_CLIENTS))
        assert r["bytes_up"] == NUM_CLIENTS * PROMPT_BYTES
        assert r["bytes_down"] == NUM_CLIENTS * PROMPT_BYTES


def test_pfedmoap_returning_clients_download_experts(method_runs):
    moap, fl = method_runs["pfedmoap"]["rounds"], method_runs["promptfl"]["rounds"]
    # round 1: nobody is in the pool yet -> the global prompt only, like PromptFL
    assert moap[0]["bytes_down"] == fl[0]["bytes_down"]
    assert moap[0]["bytes_up"] == fl[0]["bytes_up"]
    # round 2: every client returns and gets the global prompt plus its K experts
    assert moap[1]["bytes_up"] == fl[1]["bytes_up"] == NUM_CLIENTS * PROMPT_BYTES
    assert moap[1]["bytes_down"] > fl[1]["bytes_down"]
    assert moap[1]["bytes_down"] == NUM_CLIENTS * (1 + NUM_EXPERTS) * PROMPT_BYTES


# ---------------------------------------------------------------------------------- 8. split reuse
def test_split_file_reused_by_another_method(run3, runs_root, cache_dir):
    d = runs_root / "split_reuse"
    # another method and another partition (iid, not dirichlet): only the split file can make
    # the splits equal. (Same seed, so the same random towers and cached features.)
    fit_in_process(
        d,
        cache_dir,
        "--method",
        "promptfl",
        "--data.partition",
        "iid",
        "--fed.rounds",
        "1",
        "--data.split_file",
        str(run3 / "split.json"),
    )
    mine, theirs = json.loads((d / "split.json").read_text()), json.loads((run3 / "split.json").read_text())
    assert [(c["train"], c["test"]) for c in mine["clients"]] == [(c["train"], c["test"]) for c in theirs["clients"]]
    assert (d / "split.json").read_bytes() == (run3 / "split.json").read_bytes()
    # the test-set sizes reported follow the reused split
    sizes = {str(c["id"]): len(c["test"]) for c in theirs["clients"]}
    assert {k: v["n"] for k, v in read_results(d)["rounds"][0]["clients"].items()} == sizes


def test_eval_every_skips_rounds_but_not_the_last(method_runs, runs_root, cache_dir):
    d = runs_root / "eval_every"
    res = fit_in_process(
        d, cache_dir, "--method", "promptfl", "--fed.rounds", "3", "--fed.participation", "1.0", "--fed.eval_every", "2"
    )
    full = fit_in_process(
        runs_root / "eval_every_full",
        cache_dir,
        "--method",
        "promptfl",
        "--fed.rounds",
        "3",
        "--fed.participation",
        "1.0",
    )
    assert [r.get("evaluated", True) for r in res["rounds"]] == [False, True, True]
    assert "clients" not in res["rounds"][0]
    for r in (1, 2):  # evaluation does not change training: the same numbers as evaluating always
        assert res["rounds"][r]["clients"] == full["rounds"][r]["clients"]
    assert res["summary"]["final_mean_acc"] == full["summary"]["final_mean_acc"]


def test_eval_clients_per_round_samples_all_but_the_last_round(runs_root, cache_dir):
    common = ("--fed.rounds", "3", "--fed.participation", "0.5", "--eval.modes", "[local,global]")
    full = fit_in_process(runs_root / "eval_sample_full", cache_dir, *common)
    res = fit_in_process(runs_root / "eval_sample", cache_dir, *common, "--eval.clients_per_round", "2")
    for r in (0, 1):  # a seeded sample of 2, with the numbers the full evaluation gives them
        sample = res["rounds"][r]["clients"]
        assert len(sample) == 2 and res["rounds"][r]["evaluated_clients"] == 2
        assert sample == {c: full["rounds"][r]["clients"][c] for c in sample}
        assert set(res["rounds"][r]["global"]["clients"]) == set(sample)
    assert res["rounds"][0]["clients"].keys() != res["rounds"][1]["clients"].keys()
    assert res["rounds"][2] == full["rounds"][2]  # the last round: every client, as without the knob
    assert res["summary"]["final_mean_acc"] == full["summary"]["final_mean_acc"]
    again = fit_in_process(runs_root / "eval_sample_again", cache_dir, *common, "--eval.clients_per_round", "2")
    assert [r["clients"] for r in again["rounds"]] == [r["clients"] for r in res["rounds"]]
    assert main(fit_args(runs_root / "eval_sample_bad", cache_dir, "--eval.clients_per_round", "0")) == 2


# ---------------------------------------------------------------------------------- 9. faults
def fedmoap_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("fedmoap:")]


def killed_inside_write(target: Path, write) -> None:
    """Run ``write()`` in a forked child that SIGKILLs itself halfway through fedmoap's atomic
    write of ``target``: what a kill -9 at that moment leaves on disk."""
    import os

    import fedmoap.io as fio

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            real = fio._write_fd

            def half_then_die(fd: int, data: bytes) -> None:
                if f".{target.name}." in os.readlink(f"/proc/self/fd/{fd}"):
                    real(fd, data[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
                real(fd, data)

            fio._write_fd = half_then_die
            write()
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def temporaries(run_dir: Path) -> list[Path]:
    from fedmoap.io import is_temporary

    return [p for p in run_dir.rglob("*") if is_temporary(p.name)]


@pytest.mark.parametrize("target", ["split.json", "config.yaml"])
def test_kill_inside_the_first_write_leaves_a_restartable_run(base2, runs_root, cache_dir, target):
    """A kill -9 inside the atomic write of split.json (or of config.yaml, after split.json)
    leaves a temporary; the next start recognises it, removes it and starts the run."""
    from fedmoap.io import atomic_write_text

    d = runs_root / f"killed_writing_{target}"
    d.mkdir()
    if target == "config.yaml":
        shutil.copy(base2 / "split.json", d / "split.json")
    killed_inside_write(d / target, lambda: atomic_write_text(d / target, (base2 / target).read_text()))
    assert temporaries(d) and not (d / target).exists()
    res = fit_in_process(d, cache_dir, "--fed.rounds", "2")
    assert res["rounds"] == read_results(base2)["rounds"]
    assert not temporaries(d)


def test_kill_inside_a_checkpoint_write_resumes_identically(run3, base2, runs_root, cache_dir, trained_rounds):
    from fedmoap.io import atomic_write_bytes

    d = copy_run(base2, runs_root / "killed_writing_checkpoint")
    state = sorted((d / "clients").glob("*/round_*.pt"))[0]
    for target in (d / "checkpoints" / "round_0003.pt", state.with_name("round_0003.pt")):
        killed_inside_write(target, lambda: atomic_write_bytes(target, state.read_bytes()))
    assert len(temporaries(d)) == 2
    res = fit_in_process(d, cache_dir, "--fed.rounds", "3")
    assert trained_rounds == [3]
    assert res["rounds"] == read_results(run3)["rounds"]
    assert_same_final_checkpoint(d, run3)
    assert not temporaries(d)


def test_rerun_after_a_kill_before_the_hparams_writes_them(run3, runs_root, cache_dir):
    """Killed after the last results.json: no HParams session (or half of one, beside it). The
    rerun writes it, and the directory ends as the uninterrupted run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = copy_run(run3, runs_root / "killed_before_hparams")
    shutil.rmtree(d / "tensorboard" / "hparams")
    half = d / "tensorboard" / ".hparams.1234.fedmoap-tmp"
    half.mkdir()
    (half / "events.out.tfevents.0.host.1234.0").write_bytes(b"half")
    fit_in_process(d, cache_dir)
    assert layout(d) == layout(run3)
    assert (d / "results.json").read_bytes() == (run3 / "results.json").read_bytes()
    acc = EventAccumulator(str(d / "tensorboard" / "hparams"))
    acc.Reload()
    final = read_results(run3)["summary"]["final_mean_acc"]
    assert acc.Scalars("summary/final_mean_acc")[0].value == pytest.approx(final, rel=1e-6)


def test_full_disk_at_a_checkpoint_says_where_and_resumes_identically(
    run3, runs_root, cache_dir, monkeypatch, capsys, trained_rounds
):
    """ENOSPC while writing round 2's checkpoint (injected at the one OS-level write of the
    atomic writer): one line naming the file and the resume point; after that, the same command
    resumes to the uninterrupted result."""
    import errno
    import os

    import fedmoap.io as fio

    real = fio._write_fd

    def full_disk(fd: int, data: bytes) -> None:
        if "checkpoints/.round_0002.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    d = runs_root / "full_disk"
    monkeypatch.setattr(fio, "_write_fd", full_disk)
    capsys.readouterr()
    assert main(fit_args(d, cache_dir)) == 2
    lines = fedmoap_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("fedmoap: error: no space left"), lines
    for words in (
        str(d / "checkpoints" / "round_0002.pt"),
        "round 1's checkpoint is the resume point",
        "rerun the same command",
    ):
        assert words in lines[0], lines[0]
    assert [p.name for p in checkpoints(d)] == ["round_0001.pt"] and not temporaries(d)
    monkeypatch.setattr(fio, "_write_fd", real)
    trained_rounds.clear()
    res = fit_in_process(d, cache_dir)
    assert trained_rounds == [2, 3]
    assert res["rounds"] == read_results(run3)["rounds"]
    assert_same_final_checkpoint(d, run3)


def test_second_fit_on_a_locked_run_dir_is_refused_naming_the_holder(
    run3, base2, runs_root, cache_dir, capsys, monkeypatch
):
    """While another process holds the run directory's lock, fit refuses in one line naming it
    and changes nothing; a kill -9 of the holder frees the lock; fit holds it while it trains."""
    import fcntl
    import socket

    from fedmoap.federation.rounds import Federation
    from fedmoap.run.rundir import LOCK_NAME

    d = copy_run(base2, runs_root / "locked")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from fedmoap.run.rundir import RunLock; "
            "lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); time.sleep(600)",
            str(d),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(d)
        capsys.readouterr()
        assert main(fit_args(d, cache_dir, "--fed.rounds", "3")) == 2
        lines = fedmoap_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"pid {holder.pid} on host {socket.gethostname()}" in lines[0], lines
        assert snapshot(d) == before
    finally:
        holder.kill()  # SIGKILL: no clean-up of the lock file, the kernel frees the lock
        holder.wait()

    held = []
    original = Federation.run_round

    def probing(self, t, *args, **kwargs):
        with open(d / LOCK_NAME) as other:  # another open file description: conflicts with fit's
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return original(self, t, *args, **kwargs)

    monkeypatch.setattr(Federation, "run_round", probing)
    res = fit_in_process(d, cache_dir, "--fed.rounds", "3")
    assert held == [True] and res["rounds"] == read_results(run3)["rounds"]


def test_ctrl_c_says_where_exits_130_and_resumes_identically(run3, runs_root, cache_dir, tmp_path):
    from fedmoap.preemption import EXIT_INTERRUPTED

    d = runs_root / "ctrl_c"
    proc = subprocess.Popen(
        fit_subprocess_cmd(d, cache_dir, "--fed.rounds", "25"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal's foreground: a pytest-xdist worker ignores SIGINT, and its children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not (d / "checkpoints" / "round_0001.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no round_0001.pt after 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == EXIT_INTERRUPTED, err
    lines = fedmoap_lines(err)
    assert "Traceback" not in err and len(lines) == 1, err
    stopped = int(re.search(r"during round (\d+)", lines[0]).group(1))
    resume = int(re.search(r"round (\d+)'s checkpoint is the resume point", lines[0]).group(1))
    assert stopped - 1 <= resume <= stopped and "rerun the same command" in lines[0], lines[0]
    assert max(int(p.stem.split("_")[1]) for p in checkpoints(d)) == resume
    total = max(3, stopped + 1)
    reference = run3 if total == 3 else runs_root / "ctrl_c_reference"
    if total > 3:
        fit_in_process(reference, cache_dir, "--fed.rounds", str(total))
    res = fit_in_process(d, cache_dir, "--fed.rounds", str(total))
    assert res["rounds"] == read_results(reference)["rounds"]
    assert_same_final_checkpoint(d, reference)


def test_read_only_file_systems(base2, runs_root, cache_dir, tmp_path):
    """On a read-only run directory: one line, exit 2, nothing changed. A read-only feature
    cache that holds every needed entry is used without its lock files. (Read-only bind mounts
    in a private mount namespace: where they cannot be made, as for an unprivileged user, the
    test cannot run.)"""
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        ok = (
            subprocess.run(
                ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {probe} {probe}"], capture_output=True
            ).returncode
            == 0
        )
    except OSError:
        ok = False
    if not ok:
        pytest.skip("no mount namespace with bind mounts here (needs privileges)")
    d = copy_run(base2, runs_root / "read_only")
    before = snapshot(d)
    fresh = runs_root / "on_a_read_only_cache"
    code = (
        "import sys; from fedmoap.run.cli import main; "
        f"print('RC', main({fit_args(d, cache_dir, '--fed.rounds', '3')!r}), "
        f"main({fit_args(fresh, cache_dir, '--fed.rounds', '1')!r}))"
    )
    script = (
        f'mount --bind -o ro {d} {d} && mount --bind -o ro {cache_dir} {cache_dir} && exec {sys.executable} -c "{code}"'
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert "RC 2 0" in proc.stdout, proc.stdout + proc.stderr
    lines = fedmoap_lines(proc.stderr)
    assert len(lines) == 1 and str(d) in lines[0] and "read-only" in lines[0], proc.stderr
    assert snapshot(d) == before
    assert read_results(fresh)["rounds"] == read_results(base2)["rounds"][:1]


def test_results_are_strict_json_and_a_client_without_test_data_is_refused(tmp_path):
    results = smoke_fit(tmp_path, "--fed.rounds", "1")
    text = (tmp_path / "run" / "results.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    for c in results["rounds"][0]["clients"].values():  # acc is correct / n, in float64
        assert c["acc"] == c["correct"] / c["n"]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b", "c", "d"])})
    train = {"image": [PIXEL] * 8, "label": [0, 1, 2, 3] * 2}
    test = {"image": [PIXEL] * 4, "label": [0, 0, 1, 1]}  # classes 2 and 3 have no test images
    args = DataArgs(
        source=saved_dataset(tmp_path / "d", train, test, features), num_clients=2, partition="pathological", shots=None
    )
    source = load_source(args)
    with pytest.raises(FedmoapError, match="no test samples"):
        for seed in range(20):  # some seed gives one client classes {2, 3}
            make_split(args, source, seed)


class TwoRanks(Comm):
    """Rank 1 of two, where only rank 0 saw SIGUSR1 (the collective returns both ranks' values)."""

    def __init__(self):
        super().__init__(rank=1, world_size=2)

    def gather(self, obj):
        return [int(signal.SIGUSR1), obj]


def test_only_rank_0_requeues(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    message = preempted(TwoRanks(), None, 3)
    assert f"signal {int(signal.SIGUSR1)}" in message and "rank 0 requeues" in message
    assert "not under SLURM" in preempted(Comm(), signal.SIGUSR1, 3)


def test_a_fresh_run_clears_an_aborted_starts_tensorboard(tmp_path):
    stale = tmp_path / "run" / "tensorboard" / "version_0" / "events.out.tfevents.0.stale"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old curves")
    smoke_fit(tmp_path, "--fed.rounds", "1")
    assert not stale.exists() and list((tmp_path / "run" / "tensorboard").rglob("events.*"))


def test_resuming_with_other_weights_is_refused(tmp_path, capsys):
    from fedmoap.backbones.openclip import OpenCLIPBackbone

    weights = tmp_path / "tiny.pt"
    torch.save(OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0).model.state_dict(), weights)
    args = ["--model.pretrained", str(weights), "--fed.rounds"]
    smoke_fit(tmp_path, *args, "1")
    torch.save(OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=5).model.state_dict(), weights)
    rc = main(
        [
            "fit",
            "--config",
            str(SMOKE),
            *args,
            "2",
            "--run_dir",
            str(tmp_path / "run"),
            "--data.feature_cache",
            str(tmp_path / "cache"),
            "--progress",
            "false",
        ]
    )
    assert rc == 2 and "other backbone weights" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["pfedmoap", "fedvpt"])
def test_smoke_config_runs_on_cuda(tmp_path, method):
    results = smoke_fit(tmp_path, "--method", method, "--fed.rounds", "2", "--fabric.accelerator", "gpu", run=method)
    assert all(math.isfinite(r["mean_acc"]) for r in results["rounds"])
