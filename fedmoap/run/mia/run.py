"""``fedmoap mia RUN_DIR``: restore the run, record its clients, train or resume the shadow
federations, fit the attacks on the shadows, score them on the target, write ``mia.json``.

Every check that can refuse (the run directory, an unfinished run, an evaluation mode that
changes what clients train on, a shadow pool too small, an output directory holding another
run's shadows) comes before the first write. Shadow federation i is a ``fedmoap fit`` run in
``OUT/shadow-<i>`` of the target's config with ``data.split_file OUT/shadow-<i>.split.json``,
seed ``derive_seed(seed, "mia/shadow", i) mod 2^31``, ``eval.modes [local]`` evaluated only at
its last round, in one process; it runs on the target's backbone object (for random-weight
towers, which the seed would otherwise redraw, so ``fedmoap mia`` is what resumes it), and
rerunning the command resumes or reuses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedmoap.backbones.base import Backbone
from fedmoap.data.sources import load_source
from fedmoap.data.split import ClientSplit, load_split
from fedmoap.errors import FedmoapError
from fedmoap.federation.results import rounds_done
from fedmoap.io import atomic_write_text, check_directory, check_output_file
from fedmoap.run.fit import fit
from fedmoap.run.mia.args import MiaArgs, problems
from fedmoap.run.mia.attacks import metrics, mlp_attack, threshold_attack
from fedmoap.run.mia.records import Records, client_records, group_labels, shadow_split
from fedmoap.run.parse import parse_fit
from fedmoap.run.reevaluate import restore_run
from fedmoap.seeding import derive_seed

__all__ = ["REFUSED_MODES", "shadow_seed", "targets_of", "run_mia", "table"]

REFUSED_MODES = ("base2novel", "unseen_clients", "xdomain", "lodo", "xdataset")
"""Evaluation modes under which clients train on part of the classes, clients or domains only:
shadows drawn from the whole pool would not mirror them."""


def shadow_seed(seed: int, i: int) -> int:
    """Shadow federation ``i``'s run seed."""
    return derive_seed(seed, "mia/shadow", i) % 2**31


def targets_of(split: ClientSplit, which: str) -> list[int]:
    """The attacked clients: all, or the one with most training samples (the first on ties)."""
    sizes = [len(t) for t in split.train]
    return list(range(len(sizes))) if which == "all" else [int(np.argmax(sizes))]


def run_mia(run_dir: str | Path, args: MiaArgs | None = None, backbone: Backbone | None = None) -> tuple[dict, Path]:
    """Attack the finished run in ``run_dir`` as :mod:`fedmoap.run.mia` describes (``args``: default
    :class:`MiaArgs`; ``backbone``: the run's, already built); returns (the result written, its
    path ``OUT/mia.json``)."""
    run_dir, args = Path(run_dir), args or MiaArgs()
    bad = problems(args)
    if bad:
        raise FedmoapError("; ".join(bad))
    out = Path(args.out) if args.out is not None else run_dir / "mia"
    check_directory(out, "--out")  # before any work: mia.json is written after the shadows train
    check_output_file(out / "mia.json", "--out")
    federation, cfg, ckpt = restore_run(run_dir, backbone=backbone)
    t = int(ckpt["round"])
    if t < cfg.fed.rounds:
        raise FedmoapError(
            f"run_dir {run_dir} is unfinished (round {t} of {cfg.fed.rounds}); finish it with fedmoap fit first"
        )
    refused = [m for m in cfg.eval.modes if m in REFUSED_MODES]
    if refused:
        raise FedmoapError(
            f"eval.modes: fedmoap mia attacks runs whose clients train on the plain split; "
            f"run_dir {run_dir} has {', '.join(refused)}"
        )
    out = out.resolve()
    source = load_source(cfg.data)
    split = load_split(run_dir / "split.json", source, cfg.data.num_clients, key="run_dir")
    names, c = list(source.classnames), len(source.classnames)
    groups = (
        group_labels(source.train_labels, source.train_domains, c),
        group_labels(source.test_labels, source.test_domains, c),
    )
    splits = [shadow_split(split, *groups, cfg.seed, i, names, source.domain_names) for i in range(args.shadows)]
    for i, s in enumerate(splits):
        _check_shadow_dir(out / f"shadow-{i}", s, out)

    targets = targets_of(split, args.target)
    target = Records.cat([client_records(federation, split, cid, t, cfg.seed, "target") for cid in targets])
    backbone = federation.data.backbone
    del federation
    shadows, shadow_info = [], []
    for i, s in enumerate(splits):
        records = _shadow(run_dir, out, i, s, cfg.seed, cfg.fed.rounds, backbone, args.progress)
        shadows.append(records)
        shadow_info.append({"dir": f"shadow-{i}", "seed": shadow_seed(cfg.seed, i), "samples": len(records)})
    shadow = Records.cat(shadows)

    attacks = {}
    for name, verdict in (
        ("mlp", mlp_attack(shadow, target, c, cfg.seed, args.epochs, args.lr, args.batch_size)),
        ("loss_threshold", threshold_attack(shadow, target, c)),
    ):
        attacks[name] = {
            **metrics(verdict, target, names),
            "fitted": {names[k]: v for k, v in sorted(verdict.fitted.items())},
        }
    settings = {k: v for k, v in asdict(args).items() if k not in ("out", "progress")}
    result = {
        "run_dir": str(run_dir),
        "round": t,
        "method": cfg.method.name or type(cfg.method).__name__,
        "seed": cfg.seed,
        "config_digest": ckpt["config_digest"],
        "settings": settings,
        "classes": names,
        "target": {
            "clients": targets,
            "samples": len(target),
            "members": int(target.member.sum()),
            "rows": {str(cid): _rows(target, cid) for cid in targets},
        },
        "shadows": shadow_info,
        "attacks": attacks,
    }
    path = out / "mia.json"
    atomic_write_text(path, json.dumps(result, indent=1))
    return result, path


def _rows(records: Records, cid: int) -> dict[str, list[int]]:
    mine = records.client == cid
    return {
        "members": records.row[mine & (records.member == 1)].tolist(),
        "non_members": records.row[mine & (records.member == 0)].tolist(),
    }


def _check_shadow_dir(shadow_dir: Path, split: ClientSplit, out: Path) -> None:
    """Refuse a shadow directory that was trained on another shadow split (another run's)."""
    stored = shadow_dir / "split.json"
    if not stored.is_file():
        return
    try:
        clients = json.loads(stored.read_text())["clients"]
    except (OSError, ValueError, KeyError, TypeError):
        clients = None
    if clients != split.to_json()["clients"]:
        raise FedmoapError(
            f"--out {out}: {shadow_dir.name} holds a shadow run of another split (another "
            "run's shadows?); remove it or choose another --out"
        )


def _shadow(
    run_dir: Path, out: Path, i: int, split: ClientSplit, seed: int, rounds: int, backbone: Backbone, progress: bool
) -> Records:
    """Train (or resume, or reuse) shadow federation ``i`` and return its clients' records."""
    shadow_dir, split_path = out / f"shadow-{i}", out / f"shadow-{i}.split.json"
    cfg, _, _ = parse_fit(
        [
            "fit",
            "--config",
            str((run_dir / "config.yaml").resolve()),
            "--data.split_file",
            str(split_path),
            "--seed",
            str(shadow_seed(seed, i)),
            "--eval.modes",
            "[local]",
            "--fed.eval_every",
            str(rounds),
            "--fabric.devices",
            "1",
            "--fabric.num_nodes",
            "1",
            "--fabric.strategy",
            "auto",
        ]
    )
    if rounds_done(shadow_dir) < cfg.fed.rounds:
        split.save(split_path)
        fit(cfg, shadow_dir, progress, backbone=backbone)
    federation, _, ckpt = restore_run(shadow_dir, backbone=backbone)
    t = int(ckpt["round"])
    return Records.cat(
        [client_records(federation, split, cid, t, seed, f"shadow-{i}") for cid in range(split.num_clients)]
    )


def table(result: dict) -> str:
    """The attacks' numbers as a short text table."""
    lines = [f"{'attack':<16}{'accuracy %':>11}{'AUC':>8}{'TPR@1%FPR %':>13}"]
    for name, label in (("mlp", "DP-FPL MLP"), ("loss_threshold", "loss threshold")):
        a = result["attacks"][name]
        acc, auc, tpr = a["accuracy"], a["auc"], a["tpr_at_1pct_fpr"]
        lines.append(f"{label:<16}{_pct(acc):>11}{'-' if auc is None else f'{auc:.4f}':>8}{_pct(tpr):>13}")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"
