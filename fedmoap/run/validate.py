"""Checks of a run config beyond its types, before anything is built: ranges, combinations, the
method's knobs, the evaluation modes and differential privacy, each message naming its key."""

from __future__ import annotations

from fedmoap.config.typecheck import type_problems
from fedmoap.errors import FedmoapError
from fedmoap.federation import combinations, evaluation
from fedmoap.federation.config import RunConfig
from fedmoap.federation.dp_budget import problems as privacy_problems
from fedmoap.methods.base import INPUTS

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
MAX_THREADS = 1024
"""Cap on fabric.threads: a fixed number, not this machine's CPU count, so that a sweep written on
a small login node is not refused for its compute nodes."""


def validate(cfg: RunConfig, engine: str = "fit") -> None:
    """Checks beyond types, all of them, before anything is built: ranges and combinations (with
    what the method cannot combine with on ``engine``, fit or flower), each message naming its
    key; raises one :class:`FedmoapError` listing every problem."""
    problems = type_problems(cfg)
    if problems:  # the range checks below assume the declared types
        raise FedmoapError("; ".join(problems))
    d, t, f = cfg.data, cfg.train, cfg.fed
    checks = [
        (0 <= cfg.seed < 2**63, f"seed must be in [0, 2**63), got {cfg.seed}"),
        (f.rounds >= 1, "fed.rounds must be >= 1"),
        (0 < f.participation <= 1, "fed.participation must be in (0, 1]"),
        (
            f.participants is None or 1 <= f.participants <= d.num_clients,
            f"fed.participants must be in [1, data.num_clients = {d.num_clients}] or null",
        ),
        (
            f.participants is None or f.participation == 1.0,
            "fed.participants and fed.participation are both set (set one)",
        ),
        (
            d.test_from == "share" or d.max_test_per_client is not None,
            "data.test_from whole needs data.max_test_per_client (each client's test set size)",
        ),
        (
            not d.balance_cap or d.partition in ("dirichlet", "domain_dirichlet"),
            f"data.balance_cap applies to dirichlet partitions, not {d.partition}",
        ),
        (f.keep_checkpoints >= 1, "fed.keep_checkpoints must be >= 1"),
        (f.eval_every >= 1, "fed.eval_every must be >= 1"),
        (d.num_clients >= 1, "data.num_clients must be >= 1"),
        (d.shots is None or d.shots >= 1, "data.shots must be >= 1 or null"),
        (d.num_views >= 0, "data.num_views must be >= 0"),
        (d.max_test_per_client is None or d.max_test_per_client >= 1, "data.max_test_per_client must be >= 1 or null"),
        (d.alpha > 0, "data.alpha must be > 0"),
        (d.classes_per_client is None or d.classes_per_client >= 1, "data.classes_per_client must be >= 1 or null"),
        (d.feature_batch_size >= 1, "data.feature_batch_size must be >= 1"),
        (d.classnames is None or len(set(d.classnames)) == len(d.classnames), "data.classnames has duplicates"),
        (d.source.strip() != "", "data.source must not be empty"),
        (
            d.test_split != d.train_split,
            f"data.test_split {d.test_split!r} is data.train_split: clients would be tested on their training data",
        ),
        (
            d.partition != "domain_dirichlet" or d.domain_column,
            "data.partition domain_dirichlet needs data.domain_column",
        ),
        (t.local_epochs >= 1, "train.local_epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (
            t.lr_schedule == "local" or (t.lr_rounds is not None and t.lr_rounds >= 1),
            "train.lr_schedule rounds needs train.lr_rounds >= 1 (the cosine's period, usually fed.rounds)",
        ),
        (t.lr_schedule == "rounds" or t.lr_rounds is None, "train.lr_rounds is set but train.lr_schedule is local"),
        (0 <= t.momentum < 1, "train.momentum must be in [0, 1)"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (cfg.model.image_size is None or cfg.model.image_size >= 1, "model.image_size must be >= 1 or null"),
        (
            cfg.model.pretrained is None or cfg.model.pretrained.strip() != "",
            "model.pretrained is empty: give a tag, an hf-hub: id or a checkpoint path, or null for random weights",
        ),
        (
            # Fabric casts only modules and inputs passed through fabric.setup, which the clients'
            # modules are not: bf16-true would silently train in float32
            cfg.fabric.precision != "bf16-true",
            "fabric.precision bf16-true is not supported (the prompt modules would stay float32); use bf16-mixed",
        ),
        (
            cfg.fabric.threads is None or 1 <= cfg.fabric.threads <= MAX_THREADS,
            f"fabric.threads must be in 1..{MAX_THREADS} or null",
        ),
        (cfg.fabric.num_nodes >= 1, "fabric.num_nodes must be >= 1"),
        (
            cfg.fabric.precision in PRECISIONS,
            f"fabric.precision {cfg.fabric.precision!r} is not one of {', '.join(PRECISIONS)}",
        ),
    ]
    problems = [message for ok, message in checks if not ok]
    method = cfg.method
    if not method.required_inputs() <= INPUTS:
        problems.append(f"method: {type(method).__name__}'s inputs must be a subset of {sorted(INPUTS)}")
    problems += method.problems()
    problems += evaluation.problems(cfg)
    problems += privacy_problems(cfg)
    problems += combinations.problems(cfg, engine)
    if problems:
        raise FedmoapError("; ".join(problems))
