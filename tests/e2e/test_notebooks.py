"""The notebooks run, top to bottom, on small runs (so they cannot rot), and are stored without
outputs. Each is executed by nbclient with its ``parameters`` cell overridden (papermill's
convention): ``tables_and_curves`` on four smoke runs made here (PromptFL and zero-shot, two seeds,
base-to-novel), ``first_run`` with ``SMALL = True`` (the smoke config, 2 rounds)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fedmoap.run.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke.yaml"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def execute(name: str, params: dict, cwd: Path) -> nbformat.NotebookNode:
    """Run notebook ``name`` with ``params`` appended to its parameters cell; returns it executed."""
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# injected by tests/e2e/test_notebooks.py\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()
    )
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the notebook printed or displayed, and the number of images it drew."""
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text += [data.get("text/plain", ""), data.get("text/markdown", ""), data.get("text/html", "")]
            images += "image/png" in data
    return "\n".join(map(str, text)), images


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nb")
    for method in (["--method", "promptfl", "--method.n_ctx", "4"], ["--method", "zeroshot"]):
        for seed in (0, 1):
            run_dir = root / "runs" / f"{method[1]}-seed{seed}"
            assert (
                main(
                    [
                        "fit",
                        "--config",
                        str(SMOKE),
                        *method,
                        "--seed",
                        str(seed),
                        "--fed.rounds",
                        "2",
                        "--train.local_epochs",
                        "1",
                        "--eval.modes",
                        "[local,base2novel]",
                        "--run_dir",
                        str(run_dir),
                        "--data.feature_cache",
                        str(root / "cache"),
                        "--progress",
                        "false",
                    ]
                )
                == 0
            )
    return root


def test_tables_and_curves(runs):
    nb = execute("tables_and_curves.ipynb", {"RUNS": [str(runs / "runs")]}, runs)
    text, images = outputs(nb)
    assert "| method | synthetic |" in text  # the paper table (methods x datasets)
    assert "4 runs in 2 groups" in text and "promptfl" in text and "zeroshot" in text
    assert " ± " in text and "b2n.hm3" in text
    assert images >= 3  # curves, distribution, base-to-novel bars


def test_first_run(tmp_path):
    run_dir = tmp_path / "run"
    nb = execute(
        "first_run.ipynb", {"SMALL": True, "RUN_DIR": str(run_dir), "CACHE": str(tmp_path / "cache")}, tmp_path
    )
    text, images = outputs(nb)
    assert (run_dir / "results.json").is_file() and (run_dir / "split.json").is_file()
    assert "final_mean_acc" in text and "fedmoap-tiny-vit" in text and images >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"
