"""The benchmark suite runs (``--quick``) and writes its JSON contract, so that it cannot rot.

Timings are not asserted (they belong to the benchmark's report, not to a unit test); what does
not depend on the machine is: token counts, traffic bytes, and that every figure was measured.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_writes_its_contract(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--json",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["cases"], "no local-step case"
    for case in r["cases"]:
        assert {"name", "speedup_vs_reference", "ratio_to_floor"} <= set(case)
        for key in ("reference_ms", "ours_ms", "floor_ms", "speedup_vs_reference", "ratio_to_floor"):
            assert math.isfinite(case[key]) and case[key] > 0, (key, case)
        assert case["tokens_reference"] == 77 and case["tokens_ours"] < 30, case
    assert r["vision"], "no vision-prompt case"
    for v in r["vision"]:
        for key in ("ours_ms", "floor_ms", "provider_ms", "ratio_to_floor"):
            assert math.isfinite(v[key]) and v[key] > 0, (key, v)
        assert 0 < v["provider_share"] < 1, v
    assert r["memory"]["clients_10_mb"] > 100 and r["memory"]["clients_1000_mb"] > 100
    for key in ("clients_2000_mb", "ratio_2000_vs_10", "round_ratio_2000_vs_100"):
        assert math.isfinite(r["memory"][key]) and r["memory"][key] > 0, key
    assert r["throughput"]["procs_1_s"] > 0 and r["throughput"]["procs_2_s"] > 0
    traffic = {c["method"]: c for c in r["communication"]}
    prompt = 16 * 512 * 4
    assert traffic["promptfl"]["down_bytes"] == traffic["promptfl"]["up_bytes"] == prompt
    assert traffic["pfedmoap"]["up_bytes"] == prompt
    assert traffic["pfedmoap"]["down_bytes"] == (1 + 9) * prompt  # global + K = 9 experts
    assert traffic["coop"]["down_bytes"] == traffic["zeroshot"]["up_bytes"] == 0
    assert "| local step" in proc.stdout


@pytest.mark.slow
def test_scale_benchmark_measures_runs_at_equal_participants(tmp_path):
    """The at-scale series at a small count: each run finishes, its last round evaluates every
    client and the rounds before it the sample; peak RSS and round times are measured."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import scale
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = scale.at_scale([10, 60], participants=4, rounds=2, work=tmp_path)
    for n in (10, 60):
        assert out[f"clients_{n}_mb"] > 100 and out[f"clients_{n}_round_s"] > 0 and out[f"clients_{n}_last_s"] > 0
    rounds = json.loads((tmp_path / "scale-60-p4" / "results.json").read_text())["rounds"]
    assert [len(r["participants"]) for r in rounds] == [4, 4]
    assert [r["evaluated_clients"] for r in rounds] == [4, 60]


def test_communication_benchmark_counts_traffic_through_built_federations():
    """The traffic benchmark on the tiny ViT (a 16 x 64 prompt is 4,096 bytes), each method's client
    and server from a federation the builder built: PromptFL sends one prompt each way, pFedMoAP's
    returning clients download the global prompt and K = 9 experts, CoOp and zero-shot send nothing."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import communication

    from fedmoap.backbones.openclip import OpenCLIPBackbone

    rows = communication.run(OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0))
    traffic = {r["method"]: r for r in rows}
    prompt = 16 * 64 * 4
    assert traffic["promptfl"]["down_bytes"] == traffic["promptfl"]["up_bytes"] == prompt
    assert traffic["pfedmoap"]["up_bytes"] == prompt and traffic["pfedmoap"]["down_bytes"] == (1 + 9) * prompt
    assert traffic["coop"]["down_bytes"] == traffic["zeroshot"]["up_bytes"] == 0


def test_cocoop_step_benchmark_runs_and_is_exact(tmp_path):
    """The CoCoOp step benchmark on the tiny model: both paths give the same logits, every figure
    is measured, the reference path really is full-length."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cocoop_step

    from fedmoap.backbones.openclip import OpenCLIPBackbone

    row = cocoop_step.run(OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0), classes=3, batch=2, repeats=1)
    assert row["max_abs_diff"] <= 1e-5
    assert row["full_tokens"] == 77 and row["prompt_tokens"] < 20
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("ms", "floor_ms", "ratio_to_floor"))


def test_vision_step_benchmark_times_the_new_vision_methods_against_the_floor():
    """The vision-prompt step benchmark on the tiny ViT with two of the 2025-26 methods (the deep
    ones need more blocks than its 2): every figure measured, one ratio per method."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import vision_step

    row = vision_step.run("fedmoap-tiny-vit", 3, steps=1, repeats=1, methods=("fedmgp", "fedmvp"))
    assert set(row["methods"]) == {"fedmgp", "fedmvp"}
    for m in row["methods"].values():
        assert math.isfinite(m["ratio_to_floor"]) and m["ratio_to_floor"] > 0 and m["ms"] > 0
    assert row["floor_ms"] > 0 and 0 < row["provider_share"] < 1


def _official(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "official.py"), *argv], capture_output=True, text=True, timeout=60
    )


def test_official_benchmark_arguments_and_refusal(tmp_path):
    """benchmarks/official.py without running the official code: its help names both settings;
    an unknown setting or a thread count below 1 is a usage error; a --ref that is not a pFedMoAP
    checkout (missing, or a folder without its trainer) is refused in one line with exit 2."""
    help_ = _official("--help")
    assert help_.returncode == 0 and "small" in help_.stdout and "table1" in help_.stdout
    assert _official("--ref", str(tmp_path), "--setting", "huge").returncode == 2
    assert _official("--ref", str(tmp_path), "--threads", "0").returncode == 2
    (tmp_path / "federated_main.py").write_text("")
    for ref in (tmp_path / "missing", tmp_path, REPO):
        proc = _official("--ref", str(ref), "--setting", "small")
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and str(ref) in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_official_benchmark_reads_its_round_marks():
    """The official benchmark's timing from BENCH marks (wall clock, process CPU time): the round
    with experts, the time from launch to its end, both ratios of each, and one table row."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import official

    def marks(launched, rounds):
        return {"launched": launched, "finished": launched + 100, "rounds": rounds, "load": [1.0, 2.0]}

    o = official.summary(
        marks(0.0, {0: {"start": (5, 4), "end": (15, 24)}, 1: {"start": (15, 24), "end": (75, 144)}}), 1
    )
    f = official.summary(
        marks(0.0, {1: {"start": (20, 30), "end": (22, 34)}, 2: {"start": (22, 34), "end": (25, 40)}}), 2
    )
    assert (o["expert_round_s"], o["expert_round_cpu_s"], o["to_first_expert_round_s"]) == (60, 120, 75)
    assert (f["expert_round_s"], f["expert_round_cpu_s"], f["to_first_expert_round_cpu_s"]) == (3, 6, 40)
    with pytest.raises(RuntimeError, match="no timing of round 2"):
        official.summary(marks(0.0, {1: {"start": (1, 1), "end": (2, 2)}}), 2)
    r = {"official": o, "fedmoap": f, "ratio_expert_round_s": 20.0, "ratio_expert_round_cpu_s": 20.0}
    r |= {"ratio_to_first_expert_round_s": 3.0, "ratio_to_first_expert_round_cpu_s": 3.6}
    row = official.table({"small": r}).splitlines()[-1]
    assert row.startswith("| small | 60.0 s (120.0 s) | 3.0 s (6.0 s) | **20.0x** (20.0x) | 75.0 s"), row
