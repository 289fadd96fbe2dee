"""``fedmoap fit``: validate, set up (backbone, data, split, features), then run or resume rounds.

Nothing is written to the run directory until the config, the run directory's contents, the
dataset, the split and the latest checkpoint have all been checked, so a bad input never damages
an earlier run. The first write comes after taking the run directory's lock
(:class:`~fedmoap.rundir.RunLock`) and checking the directory again under it. A failed write
(full disk, read-only file system) or Ctrl-C ends with one line saying where the run stopped;
rerunning the same command resumes.
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.loggers import TensorBoardLogger
from tqdm.auto import tqdm

from fedmoap import evaluation, protocols, sanity
from fedmoap.backbones import build_backbone
from fedmoap.backbones.base import Backbone
from fedmoap.checkpoint import checkpoint_path, latest_round, load_latest, save_checkpoint
from fedmoap.config import RunConfig, config_dict, config_digest, neutral_keys  # noqa: F401  (config_digest: public here)
from fedmoap.data.sources import load_source
from fedmoap.data.split import load_split, make_split
from fedmoap.distributed import Comm, peers_problem
from fedmoap.errors import FedmoapError
from fedmoap.federated_data import gather_inputs
from fedmoap.features import FeatureCache
from fedmoap.io import atomic_write_text, check_directory, write_error
from fedmoap.methods.base import INPUTS, RunContext
from fedmoap.methods.prompts import PromptMethod
from fedmoap.pixels import PixelCache
from fedmoap.preemption import Interrupted, Preempted, requeue, stop_flag
from fedmoap.privacy import Privacy, preset_note
from fedmoap.privacy import problems as privacy_problems
from fedmoap.results import hparams, mode_scalars, mode_summary, scalars, summary, write_hparams, write_results
from fedmoap.rounds import Federation, Schedule
from fedmoap.rundir import OWN_FILES, RunLock, check_run_dir, claim, stopped_at  # noqa: F401  (OWN_FILES: public here)
from fedmoap.store import ClientStore
from fedmoap.typecheck import type_problems

DEFAULT_CACHE = Path("~/.cache/fedmoap")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
MAX_THREADS = 1024
"""Cap on fabric.threads: a fixed number, not this machine's CPU count, so that a sweep written on
a small login node is not refused for its compute nodes."""


def validate(cfg: RunConfig) -> None:
    """Checks beyond types, all of them, before anything is built: ranges and combinations, each
    message naming its key; raises one :class:`FedmoapError` listing every problem."""
    problems = type_problems(cfg)
    if problems:  # the range checks below assume the declared types
        raise FedmoapError("; ".join(problems))
    d, t, f = cfg.data, cfg.train, cfg.fed
    checks = [
        (0 <= cfg.seed < 2**63, f"seed must be in [0, 2**63), got {cfg.seed}"),
        (f.rounds >= 1, "fed.rounds must be >= 1"),
        (0 < f.participation <= 1, "fed.participation must be in (0, 1]"),
        (f.participants is None or 1 <= f.participants <= d.num_clients,
         f"fed.participants must be in [1, data.num_clients = {d.num_clients}] or null"),
        (f.participants is None or f.participation == 1.0,
         "fed.participants and fed.participation are both set (set one)"),
        (d.test_from == "share" or d.max_test_per_client is not None,
         "data.test_from whole needs data.max_test_per_client (each client's test set size)"),
        (not d.balance_cap or d.partition in ("dirichlet", "domain_dirichlet"),
         f"data.balance_cap applies to dirichlet partitions, not {d.partition}"),
        (f.keep_checkpoints >= 1, "fed.keep_checkpoints must be >= 1"),
        (f.eval_every >= 1, "fed.eval_every must be >= 1"),
        (d.num_clients >= 1, "data.num_clients must be >= 1"),
        (d.shots is None or d.shots >= 1, "data.shots must be >= 1 or null"),
        (d.num_views >= 0, "data.num_views must be >= 0"),
        (d.max_test_per_client is None or d.max_test_per_client >= 1,
         "data.max_test_per_client must be >= 1 or null"),
        (d.alpha > 0, "data.alpha must be > 0"),
        (d.classes_per_client is None or d.classes_per_client >= 1, "data.classes_per_client must be >= 1 or null"),
        (d.feature_batch_size >= 1, "data.feature_batch_size must be >= 1"),
        (d.classnames is None or len(set(d.classnames)) == len(d.classnames), "data.classnames has duplicates"),
        (d.source.strip() != "", "data.source must not be empty"),
        (d.test_split != d.train_split,
         f"data.test_split {d.test_split!r} is data.train_split: clients would be tested on their training data"),
        (d.partition != "domain_dirichlet" or d.domain_column,
         "data.partition domain_dirichlet needs data.domain_column"),
        (t.local_epochs >= 1, "train.local_epochs must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (t.lr_schedule == "local" or (t.lr_rounds is not None and t.lr_rounds >= 1),
         "train.lr_schedule rounds needs train.lr_rounds >= 1 (the cosine's period, usually fed.rounds)"),
        (t.lr_schedule == "rounds" or t.lr_rounds is None, "train.lr_rounds is set but train.lr_schedule is local"),
        (0 <= t.momentum < 1, "train.momentum must be in [0, 1)"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (cfg.model.image_size is None or cfg.model.image_size >= 1, "model.image_size must be >= 1 or null"),
        (cfg.fabric.threads is None or 1 <= cfg.fabric.threads <= MAX_THREADS,
         f"fabric.threads must be in 1..{MAX_THREADS} or null"),
        (cfg.fabric.num_nodes >= 1, "fabric.num_nodes must be >= 1"),
        (cfg.fabric.precision in PRECISIONS,
         f"fabric.precision {cfg.fabric.precision!r} is not one of {', '.join(PRECISIONS)}"),
    ]
    problems = [message for ok, message in checks if not ok]
    method = cfg.method
    if not method.required_inputs() <= INPUTS:
        problems.append(f"method: {type(method).__name__}'s inputs must be a subset of {sorted(INPUTS)}")
    problems += method.problems()
    problems += evaluation.problems(cfg)
    problems += privacy_problems(cfg)
    if problems:
        raise FedmoapError("; ".join(problems))


def preempted(comm: Comm | None, signal_number: int | None, r: int) -> str:
    """What a preempted run says; only rank 0 requeues a SLURM job (once, for every rank)."""
    received = [s for s in (comm.gather(signal_number) if comm else [signal_number]) if s is not None]
    sig = received[0] if received else None
    if comm and not comm.is_main:
        how = "rank 0 requeues the job if needed"
    elif sig == signal.SIGUSR1:
        how = requeue()
    else:
        how = "not requeued (SIGTERM: a cancel, or SLURM requeues a preempted job itself)"
    where = (f"during round {r}; the checkpoint of round {r - 1} is the resume point" if r else
             "during set-up; what was encoded is cached")
    return f"stopped by signal {sig} {where}; {how}"


def fit(cfg: RunConfig, run_dir: str | Path, progress: bool = True, backbone: Backbone | None = None) -> dict[str, Any]:
    """Run (or resume) the federated training ``cfg`` describes, writing into ``run_dir``.

    ``backbone``: an already built frozen backbone for ``cfg.model`` (studies run many fits in one
    process on one backbone); None builds it.

    Launches Fabric's processes (``cfg.fabric``); every rank runs this function. Raises
    :class:`~fedmoap.preemption.Preempted` after a SIGUSR1/SIGTERM (requeueing under SLURM),
    :class:`~fedmoap.preemption.Interrupted` after Ctrl-C (SIGINT), and a
    :class:`FedmoapError` for bad input or a failed write (e.g. a full disk), each saying where
    the run stopped.
    """
    run_dir = Path(run_dir)
    validate(cfg)
    where: dict[str, Any] = {"stage": "set-up", "round": 0, "done": 0}  # done: the newest checkpoint
    lock = RunLock(run_dir)
    try:
        return _fit(cfg, run_dir, progress, lock, where, backbone)
    except KeyboardInterrupt:
        raise Interrupted(stopped_at(where, "interrupted (SIGINT)")) from None
    except OSError as exc:
        if where["stage"] == "set-up":  # not a write into the run directory
            raise FedmoapError(write_error(exc, "rerun the same command")) from None
        raise FedmoapError(write_error(exc, stopped_at(where, "stopped"))) from None
    finally:
        lock.release()


def _fit(cfg: RunConfig, run_dir: Path, progress: bool, lock: RunLock, where: dict[str, Any],
         backbone: Backbone | None) -> dict[str, Any]:
    cfg_dict = config_dict(cfg)
    digest = config_digest(cfg_dict)
    method = cfg.method
    f = cfg.fabric
    # slurm/array.sbatch runs single-process jobs without srun on purpose
    warnings.filterwarnings("ignore", message="The `srun` command is available")
    problem = peers_problem(f.num_nodes)
    if problem:
        raise FedmoapError(problem)
    try:
        fabric = L.Fabric(accelerator=f.accelerator, devices=f.devices, num_nodes=f.num_nodes,
                          strategy=f.strategy, precision=f.precision)
    except ImportError as exc:  # an accelerator whose library is not installed (tpu: torch_xla)
        raise FedmoapError(f"fabric.accelerator {f.accelerator!r}: {' '.join(str(exc).split())}") from None
    except (ValueError, RuntimeError, TypeError) as exc:
        raise FedmoapError(f"fabric: {' '.join(str(exc).split())}") from None
    fabric.launch()
    comm = Comm.from_fabric(fabric)
    if f.threads:
        torch.set_num_threads(f.threads)
    torch.set_float32_matmul_precision("highest")
    resuming = check_run_dir(run_dir, cfg_dict)
    cache_root = Path(cfg.data.feature_cache or DEFAULT_CACHE / "features").expanduser()
    check_directory(cache_root, "data.feature_cache")
    t0 = time.perf_counter()
    backbone = (backbone or build_backbone(cfg.model, cfg.seed)).to(fabric.device)
    problems = method.backbone_problems(backbone)
    if isinstance(method, PromptMethod):
        problems = method.context_problems(backbone) + problems
    if problems:
        raise FedmoapError("; ".join(problems))
    source = load_source(cfg.data)
    classes = evaluation.train_classes(cfg.eval, source)  # base2novel: partition base classes only
    domains = protocols.domain_plan(cfg.eval, source)  # xdomain, lodo, xdataset: source domains only
    split = (load_split(run_dir / "split.json", source, cfg.data.num_clients, key="run_dir") if resuming
             else make_split(cfg.data, source, cfg.seed, classes.base if classes else None,
                             domains.source_codes if domains else None))
    evaluation.complete_split(split, cfg, source, classes)
    ckpt = load_latest(run_dir, digest) if resuming else None
    seen = (resuming, latest_round(run_dir) if resuming else 0)
    fingerprints = {"image": backbone.image_fingerprint(), "text": backbone.text_fingerprint()}
    if ckpt is not None and ckpt.get("backbone", fingerprints) != fingerprints:
        raise FedmoapError(f"run_dir {run_dir}: the checkpoint was made with other backbone weights "
                           f"(model.pretrained {cfg.model.pretrained!r} has changed since); resume with "
                           "the original weights or start a new --run_dir")
    batch, inputs = cfg.data.feature_batch_size, method.required_inputs()
    stop = stop_flag()
    features = FeatureCache(cache_root, backbone, batch, fabric.device, stop=stop) if "features" in inputs else None
    tokens = (FeatureCache(cache_root, backbone, batch, fabric.device, tokens=True, stop=stop)
              if "tokens" in inputs else None)
    pixels = PixelCache(cache_root, backbone) if "pixels" in inputs else None
    try:
        with fabric.rank_zero_first():  # rank 0 fills the caches, the others then read them
            data = gather_inputs(inputs, cfg.data, source, split, features, tokens, pixels, cfg.seed)
    except Preempted:
        raise Preempted(preempted(None, stop.signal, 0)) from None
    data.device, data.backbone = fabric.device, backbone
    if classes is not None:  # labels in base-then-novel order; clients know the base classes
        evaluation.apply_class_order(data, classes)
    checks = {}
    if comm.is_main:
        warn = [sanity.numeric_names(source.classnames)]
        if cfg.model.pretrained or cfg.model.arch.startswith("packaged"):  # random towers: no gate
            zs_cache = features or FeatureCache(cache_root, backbone, batch, fabric.device, stop=stop)
            checks["zero_shot"] = sanity.zero_shot_check(
                backbone, source, np.concatenate(split.test), zs_cache, cfg.data.image_column, cfg.seed)
            warn.append(checks["zero_shot"].get("warning"))
        for message in filter(None, warn):
            print(f"fedmoap: warning: {message}", file=sys.stderr)
    setup_s = time.perf_counter() - t0

    keep = {"keep": True, "reset": False}.get(cfg.train.optimizer_state, method.keep_optimizer_state)
    run = RunContext(cfg.seed, cfg.data.num_clients, cfg.train, keep)
    module = method.build_client(backbone, classes.names_of(classes.base) if classes else source.classnames,
                                 run).to(fabric.device)
    server = method.build_server(module.global_init(), run)
    store = ClientStore(run_dir / "clients")
    history: list[dict] = []
    t = cfg.train
    held_out = split.extra.get("unseen_clients", [])
    schedule = Schedule(cfg.seed, cfg.data.num_clients, cfg.fed.participation, t.local_epochs,
                        t.batch_size, t.eval_batch_size, cfg.fed.eval_every, cfg.fed.rounds,
                        count=cfg.fed.participants, own_label_space=cfg.eval.local_label_space == "own",
                        held_out=frozenset(held_out))
    privacy = None
    try:
        if ckpt is not None:
            server.load_state_dict(ckpt["server"])
            store.load_state_dict(ckpt["store"])
            history = list(ckpt["history"])
            summary(history), mode_summary(history)  # what every later write of the results reads
            [(scalars(r), mode_scalars(r)) for r in history[-1:]]
        if cfg.dp.mode != "off":  # differential privacy (fedmoap/privacy.py); may refuse a budget
            privacy = Privacy(cfg.dp, seed=cfg.seed, method=method, module=module, data=data,
                              schedule=schedule, state=(ckpt or {}).get("privacy"))
            privacy.replay(history)
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        if ckpt is None:
            raise
        raise FedmoapError(f"checkpoint {checkpoint_path(run_dir, ckpt['round'])} does not fit this run "
                           f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); move it away to "
                           "resume from an earlier one") from None
    if privacy is not None:
        note = preset_note(cfg.dp, cfg.data.num_clients, min(map(data.train_size, range(data.num_clients))))
        if note and comm.is_main:
            print(f"fedmoap: note: {note}", file=sys.stderr)
    claim(run_dir, cfg_dict, comm, lock, seen)  # every rank has checked the run directory
    done = history[-1]["round"] if history else 0
    where.update(stage="start", done=done)
    if comm.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)  # an aborted start's curves
            split.save(run_dir / "split.json")
        if not resuming or cfg.fed.rounds > done:  # config.yaml says how far the run goes
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))

    modes = (evaluation.ModeEvaluator(cfg.eval, classes, held_out, t.local_epochs)
             if set(cfg.eval.modes) - {"local"} else None)
    federation = Federation(method, module, server, store, data, schedule, fabric, comm,
                            privacy=privacy, modes=modes)
    # a resumed run purges what a killed run logged after its last checkpoint
    logger = (TensorBoardLogger(run_dir, name="tensorboard", version=0,
                                **({"purge_step": done + 1} if done else {}))
              if comm.is_main else None)
    extra = {"method": method.name or method.spec()["class_path"], "seed": cfg.seed,
             "num_clients": cfg.data.num_clients, "config_digest": digest,
             "world_size": comm.world_size,
             "eval_modes": [m for m in evaluation.MODES if m in cfg.eval.modes or m == "local"], **checks}
    if privacy is not None:
        extra["privacy"] = privacy.summary  # the accountant updates it in place every round
    rounds_s = 0.0
    hparams_dir = run_dir / "tensorboard" / "hparams"
    try:
        for r in tqdm(range(done + 1, cfg.fed.rounds + 1), desc="rounds", initial=done,
                      total=cfg.fed.rounds, disable=not (progress and comm.is_main)):
            where.update(stage="round", round=r)
            t1 = time.perf_counter()
            record = None if comm.any(stop()) else federation.run_round(r, progress, stop)
            if record is None:
                raise Preempted(preempted(comm, stop.signal, r))
            rounds_s += time.perf_counter() - t1
            history.append(record)
            if comm.is_main:
                save_checkpoint(run_dir, r, {"config_digest": digest, "server": server.state_dict(),
                                             "store": store.state_dict(), "history": history,
                                             "backbone": fingerprints,
                                             **({"privacy": privacy.state_dict()} if privacy else {})},
                                cfg.fed.keep_checkpoints)
                where["done"] = r
                recent = {c for rec in history[-cfg.fed.keep_checkpoints - 1:] for c in rec["participants"]}
                store.collect_garbage(sorted(recent), cfg.fed.keep_checkpoints, r)
                write_results(run_dir / "results.json", history, extra)
                # after the checkpoint: never logged twice
                logger.log_metrics({**scalars(record), **mode_scalars(record)}, step=r)
                logger.experiment.flush()
        where["stage"] = "finish"
        # HParams tab: settings -> final numbers; also written by the rerun of a run killed before it
        if comm.is_main and history and (done < cfg.fed.rounds or not any(hparams_dir.glob("events.*"))):
            write_hparams(hparams_dir, *hparams(cfg_dict, extra["method"], history, neutral_keys()),
                          step=history[-1]["round"])
    finally:
        stop.close()
        if logger is not None:
            logger.finalize("success")
    if comm.is_main:
        write_results(run_dir / "results.json", history, extra)
    comm.barrier()
    computed = sum(c.computed for c in (features, tokens, pixels) if c is not None)
    return {"rounds": history, "setup_seconds": setup_s, "round_seconds": rounds_s,
            "features_computed": computed, "rank": comm.rank, "world_size": comm.world_size}
