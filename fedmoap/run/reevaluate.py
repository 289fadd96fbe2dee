"""``fedmoap eval RUN_DIR [--key value ...]``: evaluate a finished run again, with other evaluation
settings, without training and without changing the run.

The federation is rebuilt by :func:`~fedmoap.federation.build.build_federation` from the run's own
``config.yaml`` with the overrides applied, on the run's ``split.json``, and restored from its
newest checkpoint; every training client is then evaluated as the run's last round was (the same
random streams: with no override the accuracies equal the run's last round's). What may be
overridden is what evaluation reads and training did not: ``eval.*`` (except adding the modes that
change training: ``base2novel``, ``unseen_clients``), the method's knobs (same method; e.g.
PEP-FedPT's ``method.prior uniform``), ``train.eval_batch_size`` and ``fabric.*``; anything else
is refused with one line. The result is written, in ``results.json``'s schema with one round, to
``--out`` (default ``RUN_DIR/eval/<digest>.json``, the digest of the evaluation config), the
only file it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from fedmoap.backbones.base import Backbone
from fedmoap.config.digest import config_digest
from fedmoap.errors import FedmoapError
from fedmoap.federation import evaluation
from fedmoap.federation.build import Start, StartMismatch, build_federation
from fedmoap.federation.config import RunConfig, config_dict
from fedmoap.federation.results import round_record, write_results
from fedmoap.federation.rounds import Federation
from fedmoap.io import check_output_file
from fedmoap.run.checkpoint import load_latest
from fedmoap.run.parse import parse_fit
from fedmoap.run.validate import validate

__all__ = ["TRAINING_MODES", "override_problems", "restore_run", "reevaluate"]

TRAINING_MODES = ("base2novel", "unseen_clients")
"""Evaluation modes that change what the clients train on (the partition, who trains)."""


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{key}."))
        else:
            out[key] = v
    return out


def override_problems(trained: RunConfig, wanted: RunConfig) -> list[str]:
    """Why ``wanted`` cannot evaluate the run made with ``trained`` (each message naming a key)."""
    a, b = _flat(config_dict(trained)), _flat(config_dict(wanted))
    problems = []
    if type(trained.method) is not type(wanted.method):
        return [
            f"method: the run trained {type(trained.method).__name__}; eval keeps the method (override its knobs only)"
        ]
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if key == "eval.modes":
            added = sorted(set(b[key]) - set(a[key]))
            training = [m for m in added if m in TRAINING_MODES]
            if training:
                problems.append(
                    f"eval.modes: {', '.join(training)} changes what the clients trained on; "
                    "rerun fedmoap fit with it instead"
                )
            continue
        if key in ("eval.base_fraction", "eval.unseen_fraction") and set(a["eval.modes"]) & set(TRAINING_MODES):
            problems.append(f"{key}: the run's clients were trained with {a.get(key)}")
        elif not key.startswith(("eval.", "method.", "fabric.", "train.eval_batch_size")):
            problems.append(
                f"{key}: changes what the run trained (eval overrides eval.*, the method's "
                "knobs, train.eval_batch_size and fabric.*)"
            )
    return problems


def restore_run(
    run_dir: str | Path, overrides: list[str] = (), backbone: Backbone | None = None
) -> tuple[Federation, RunConfig, dict]:
    """The finished run in ``run_dir`` rebuilt (:func:`~fedmoap.federation.build.build_federation`) with
    ``overrides`` and restored from its newest checkpoint, in one CPU or GPU process as its
    ``fabric`` section says: (federation, the config with the overrides, the checkpoint). For
    ``fedmoap eval`` and diagnostics that look inside a run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FedmoapError(f"run_dir {run_dir}: no config.yaml (not a fedmoap run directory)")
    trained, _, _ = parse_fit(["fit", "--config", str(run_dir / "config.yaml")])
    wanted, _, _ = parse_fit(["fit", "--config", str(run_dir / "config.yaml"), *overrides])
    validate(wanted)
    problems = override_problems(trained, wanted)
    if problems:
        raise FedmoapError("; ".join(problems))
    ckpt = load_latest(run_dir, config_digest(config_dict(trained)))
    if ckpt is None:
        raise FedmoapError(f"run_dir {run_dir}: no checkpoint to evaluate (run fedmoap fit first)")
    f = wanted.fabric
    torch.set_float32_matmul_precision("highest")
    if f.threads:
        torch.set_num_threads(f.threads)
    fabric = L.Fabric(accelerator=f.accelerator, devices=1, precision=f.precision)
    start = Start(int(ckpt["round"]), server=ckpt["server"], store=ckpt["store"])  # evaluation spends no budget
    try:
        federation, _ = build_federation(
            wanted, run_dir=run_dir, fabric=fabric, start=start, backbone=backbone, resuming=True
        )
    except StartMismatch as exc:
        raise FedmoapError(f"the overrides do not fit run_dir {run_dir}'s checkpoint ({exc})") from None
    return federation, wanted, ckpt


def reevaluate(
    run_dir: str | Path,
    overrides: list[str],
    out: str | Path | None = None,
    backbone: Backbone | None = None,
    progress: bool = False,
) -> tuple[dict, Path]:
    """Evaluate the finished run in ``run_dir`` with ``overrides`` (``fedmoap fit`` arguments);
    returns (the written record set, its path)."""
    run_dir = Path(run_dir)
    if out is not None:  # before the run is restored: a path that cannot be written wastes no work
        check_output_file(Path(out), "--out")
    federation, wanted, ckpt = restore_run(run_dir, overrides, backbone)
    digest = config_digest(config_dict(wanted))
    path = Path(out) if out is not None else run_dir / "eval" / f"{digest[:16]}.json"
    check_output_file(path, "--out" if out is not None else "run_dir")
    t = int(ckpt["round"])
    counts = federation.evaluate(federation.schedule.clients, t, progress)
    record = round_record(t, dict(sorted(counts.items())), [], bytes_up=0, bytes_down=0)
    if federation.modes is not None:
        record.update(federation.modes(federation, t, counts, progress))
    extra = {
        "method": wanted.method.name or wanted.method.spec()["class_path"],
        "seed": wanted.seed,
        "num_clients": wanted.data.num_clients,
        "config_digest": digest,
        "evaluation_of": {
            "run_dir": str(run_dir),
            "round": t,
            "overrides": list(overrides),
            "config_digest": ckpt["config_digest"],
        },
        "eval_modes": [m for m in evaluation.MODES if m in wanted.eval.modes or m == "local"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_results(path, [record], extra)
    return {"rounds": [record], **extra}, path
