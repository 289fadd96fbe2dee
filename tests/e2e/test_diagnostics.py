"""The diagnostics (scripts/diagnostics/), run by hand and imported by nothing else: each one
imports without running, and its cheapest real path runs here, so that none can rot."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from tests.worlds import SMOKE, fit_smoke, results

DIAGNOSTICS = Path(__file__).resolve().parents[2] / "scripts" / "diagnostics"
NEEDS = {name: ("timm", "onnx") for name in ("packaged_vit_onnx_check", "packaged_vit_speed", "packaged_vit_zero_shot")}
"""Modules a diagnostic imports beyond fedmoap's own dependencies."""


def load(name: str):
    """Import ``scripts/diagnostics/<name>.py`` as a module (which must run nothing)."""
    for module in NEEDS.get(name, ()):
        pytest.importorskip(module)
    spec = importlib.util.spec_from_file_location(f"diagnostics_{name}", DIAGNOSTICS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(p.stem for p in DIAGNOSTICS.glob("*.py")))
def test_every_diagnostic_imports_without_running(name, capsys):
    module = load(name)
    assert callable(module.main)
    assert capsys.readouterr().out == ""  # importing ran nothing


def test_dp_held_out_z_reproduces_the_fix_it_measured():
    """Seed 4 holds out client 0, the busiest plan: counting it asked for z 1.3721, the federation's
    own plan 1.2305 (the numbers test_privacy pins)."""
    held_out, before, after = load("dp_held_out_z").held_out_z(4, "coop")
    assert held_out == [0] and round(before, 4) == 1.3721 and round(after, 4) == 1.2305


def test_test_mix_measures_each_clients_total_variation():
    """The diagnostic's finding on a small split: ``whole`` follows each client's training mix more
    closely than ``share``."""
    test_mix = load("test_mix")
    share = DataArgs(source="synthetic", num_clients=3, alpha=0.1, test_from="share")
    source = load_source(share)
    tvs = {tf: test_mix.total_variations(replace(share, test_from=tf), source, seeds=2) for tf in ("share", "whole")}
    assert all(len(v) == 6 and all(0.0 <= tv <= 1.0 for tv in v) for v in tvs.values())
    assert np.mean(tvs["whole"]) < np.mean(tvs["share"])


def test_rss_per_round_prints_a_line_per_round_and_unpatches(tmp_path, capsys):
    import fedmoap.federation.rounds as rounds

    original = rounds.Federation.run_round
    argv = ["fit", "--config", str(SMOKE), "--fed.rounds", "2", "--run_dir", str(tmp_path / "run")]
    argv += ["--data.feature_cache", str(tmp_path / "cache"), "--progress", "false", "--fabric.threads", "1"]
    assert load("rss_per_round").main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in lines] == ["round 1", "round 2"]
    assert all("MB, after gc+trim" in line for line in lines)
    assert rounds.Federation.run_round is original


def test_pfedmoap_parts_full_logits_give_the_runs_accuracies(tmp_path):
    run_dir = fit_smoke(tmp_path / "run", "--fed.rounds", "1")
    parts = load("pfedmoap_parts").parts(run_dir, {})
    assert list(parts) == ["full", "local prompt term", "MoE term", "MoE, local expert only", "global prompt"]
    final = results(run_dir)["rounds"][-1]["clients"]
    assert parts["full"] == pytest.approx([final[c]["acc"] for c in sorted(final, key=int)])
    assert all(0.0 <= a <= 1.0 for accs in parts.values() for a in accs)


def test_packaged_vit_speed_arguments_and_medians():
    speed = load("packaged_vit_speed")
    args = speed.parse_args([])
    assert (args.size, args.batch, args.runs, args.threads, args.cache, args.bridge) == (112, 32, 5, 0, None, 64)
    assert speed.parse_args(["--size", "56", "--runs", "1"]).size == 56
    calls = []
    wall_median, cpu_median, walls = speed.median_seconds(lambda: calls.append(sum(range(20_000))), 3)
    assert len(calls) == 4 and len(walls) == 3  # one warm-up
    assert wall_median in walls and all(w > 0 for w in walls) and cpu_median >= 0


def test_packaged_vit_zero_shot_arguments():
    zero_shot = load("packaged_vit_zero_shot")
    args = zero_shot.parse_args([])
    assert (args.test, args.size, args.grid, args.bridge) == (2000, 112, False, 3000)
    assert zero_shot.parse_args(["--grid", "--bridge", "50"]).grid


def test_packaged_vit_onnx_check_exposes_the_graphs_tokens_and_positions():
    from onnx import TensorProto, helper

    check = load("packaged_vit_onnx_check")
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])  # noqa: E731
    nodes = [
        helper.make_node("Identity", ["x"], ["/backbone/embeddings/Concat_6_output_0"], name="/backbone/embeddings/c"),
        helper.make_node("Identity", ["x"], ["first"], name="/backbone/layernorm/Mul"),
        helper.make_node("Identity", ["first"], ["last"], name="/backbone/layernorm/Add"),
        helper.make_node("Identity", ["last"], ["y"], name="/head"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [value("x")], [value("y")]))
    outputs = check.expose_outputs(model)
    assert outputs == {"pos": "/backbone/embeddings/Concat_6_output_0", "tokens": "last"}
    assert [o.name for o in model.graph.output] == ["y", outputs["pos"], "last"]
