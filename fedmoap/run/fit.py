"""``fedmoap fit``: validate, set up (backbone, data, split, features), then run or resume rounds.

Read it as three steps, each a function: :func:`setup` (Fabric, the run directory's state, the
checkpoint), :func:`~fedmoap.federation.build.build_federation` (:mod:`fedmoap.federation.build`, the one place a
federation is assembled) and :func:`loop` (rounds, checkpoints, results, TensorBoard).

Nothing is written to the run directory until the config, the run directory's contents, the
dataset, the split and the latest checkpoint have all been checked, so a bad input never damages
an earlier run. The first write comes after taking the run directory's lock
(:class:`~fedmoap.run.rundir.RunLock`) and checking the directory again under it. A failed write
(full disk, read-only file system) or Ctrl-C ends with one line saying where the run stopped;
rerunning the same command resumes.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.fabric.loggers import TensorBoardLogger
from tqdm.auto import tqdm

from fedmoap.backbones import build_backbone
from fedmoap.backbones.base import Backbone
from fedmoap.config.digest import config_digest
from fedmoap.config.sections import neutral_keys
from fedmoap.distributed import Comm, peers_problem
from fedmoap.errors import FedmoapError
from fedmoap.federation import evaluation, sanity
from fedmoap.federation.build import Resolved, Start, StartMismatch, build_federation
from fedmoap.federation.config import RunConfig, config_dict
from fedmoap.federation.dp_budget import preset_note
from fedmoap.federation.results import (
    header,
    hparams,
    mode_scalars,
    mode_summary,
    scalars,
    summary,
    write_hparams,
    write_results,
)
from fedmoap.federation.rounds import Federation, Transport
from fedmoap.inputs.features import FeatureCache
from fedmoap.io import atomic_write_text, write_error
from fedmoap.preemption import Interrupted, Preempted, StopFlag, StoppedAtStartup, requeue_note, stop_flag
from fedmoap.run.checkpoint import checkpoint_path, code_version, latest_round, load_latest, save_checkpoint
from fedmoap.run.rundir import Progress, RunLock, Seen, check_run_dir, claim, stopped_at
from fedmoap.run.validate import validate

__all__ = ["preempted", "fit", "Setup", "setup", "stop_during_setup", "build", "misfit", "zero_shot_checks", "loop"]


def preempted(comm: Comm | None, signal_number: int | None, r: int) -> str:
    """What a preempted run says; only rank 0 requeues a SLURM job (once, for every rank)."""
    received = [s for s in (comm.gather(signal_number) if comm else [signal_number]) if s is not None]
    sig = received[0] if received else None
    if comm and not comm.is_main:
        how = "rank 0 requeues the job if needed"
    else:
        how = requeue_note(sig)
    where = (
        f"during round {r}; the checkpoint of round {r - 1} is the resume point"
        if r
        else "during set-up; what was encoded is cached"
    )
    return f"stopped by signal {sig} {where}; {how}"


def fit(
    cfg: RunConfig,
    run_dir: str | Path,
    progress: bool = True,
    backbone: Backbone | None = None,
    transport: Transport | None = None,
) -> dict[str, Any]:
    """Run (or resume) the federated training ``cfg`` describes, writing into ``run_dir``.

    ``backbone``: an already built frozen backbone for ``cfg.model`` (studies run many fits in one
    process on one backbone); None builds it. ``transport``: how the rounds reach the clients
    (:class:`~fedmoap.federation.rounds.Transport`; None: in this process; :mod:`fedmoap.run.flower`: Flower).

    Launches Fabric's processes (``cfg.fabric``); every rank runs this function. Raises
    :class:`~fedmoap.preemption.Preempted` after a SIGUSR1/SIGTERM (requeueing under SLURM),
    :class:`~fedmoap.preemption.Interrupted` after Ctrl-C (SIGINT), and a
    :class:`FedmoapError` for bad input or a failed write (e.g. a full disk), each saying where
    the run stopped.
    """
    run_dir = Path(run_dir)
    validate(cfg)
    where = Progress()
    lock = RunLock(run_dir)
    try:
        return _fit(cfg, run_dir, progress, lock, where, backbone, transport)
    except StoppedAtStartup as exc:
        raise Preempted(str(exc)) from None
    except KeyboardInterrupt:
        raise Interrupted(stopped_at(where, "interrupted (SIGINT)")) from None
    except OSError as exc:
        if where.stage == "set-up":  # not a write into the run directory
            raise FedmoapError(write_error(exc, "rerun the same command")) from None
        raise FedmoapError(write_error(exc, stopped_at(where, "stopped"))) from None
    finally:
        lock.release()


@dataclass
class Setup:
    """A run's process-level state before the federation is built."""

    cfg: RunConfig
    run_dir: Path
    cfg_dict: dict
    digest: str
    fabric: L.Fabric
    comm: Comm
    resuming: bool
    """The run directory holds this config's run (resume it)."""
    ckpt: dict | None
    """The newest checkpoint (resuming), else None."""
    seen: Seen
    stop: StopFlag
    fingerprints: dict | None = None
    """The backbone's weight fingerprints (checkpoints keep them), once built."""


def setup(cfg: RunConfig, run_dir: Path) -> Setup:
    """Launch Fabric's processes, check the run directory (never writing) and load its newest
    checkpoint."""
    cfg_dict = config_dict(cfg)
    f = cfg.fabric
    # slurm/array.sbatch runs single-process jobs without srun on purpose
    warnings.filterwarnings("ignore", message="The `srun` command is available")
    problem = peers_problem(f.num_nodes)
    if problem:
        raise FedmoapError(problem)
    stop = stop_flag()
    try:
        with stop.at_once():  # one process, nothing written: a signal stops it here and now
            fabric = L.Fabric(
                accelerator=f.accelerator,
                devices=f.devices,
                num_nodes=f.num_nodes,
                strategy=f.strategy,
                precision=f.precision,
            )
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
    digest = config_digest(cfg_dict)
    ckpt = load_latest(run_dir, digest) if resuming else None
    seen = Seen(resuming, latest_round(run_dir) if resuming else 0)
    stop_during_setup(comm, stop)
    return Setup(cfg, run_dir, cfg_dict, digest, fabric, comm, resuming, ckpt, seen, stop)


def stop_during_setup(comm: Comm, stop: StopFlag) -> None:
    """Raise :class:`Preempted` if any rank has received SIGUSR1/SIGTERM (a collective: every rank
    calls it at the same points of the set-up, between its phases, before the first write)."""
    if comm.any(stop()):
        raise Preempted(preempted(comm, stop.signal, 0))


def build(
    s: Setup, backbone: Backbone | None, transport: Transport | None = None
) -> tuple[Federation, Resolved, list[dict], dict]:
    """The federation at the run's newest checkpoint: (federation, what it was resolved from,
    the rounds recorded so far, set-up checks for results.json)."""
    cfg, ckpt = s.cfg, s.ckpt
    backbone = backbone or build_backbone(cfg.model, cfg.seed)
    stop_during_setup(s.comm, s.stop)
    fingerprints = {"image": backbone.image_fingerprint(), "text": backbone.text_fingerprint()}
    if ckpt is not None and ckpt.get("backbone", fingerprints) != fingerprints:
        raise FedmoapError(
            f"run_dir {s.run_dir}: the checkpoint was made with other backbone weights "
            f"(model.pretrained {cfg.model.pretrained!r} has changed since); resume with "
            "the original weights or start a new --run_dir"
        )
    start = Start.of(ckpt)
    try:
        federation, resolved = build_federation(
            cfg,
            run_dir=s.run_dir,
            fabric=s.fabric,
            start=start,
            transport=transport,
            comm=s.comm,
            backbone=backbone,
            resuming=s.resuming,
            stop=s.stop,
        )
    except Preempted:
        raise Preempted(preempted(None, s.stop.signal, 0)) from None
    except StartMismatch as exc:
        raise misfit(s, exc) from None
    history = list(start.history)
    try:
        summary(history), mode_summary(history)  # what every later write of the results reads
        [(scalars(r), mode_scalars(r)) for r in history[-1:]]
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise misfit(s, StartMismatch(exc)) from None
    checks = zero_shot_checks(cfg, resolved, s)
    made_by, now = (ckpt or {}).get("code"), code_version()
    if made_by is not None and made_by != now and s.comm.is_main:
        print(
            f"fedmoap: note: resuming a checkpoint written by fedmoap {made_by.get('version')} "
            f"(commit {made_by.get('commit')}) with {now['version']} (commit {now['commit']})",
            file=sys.stderr,
        )
    if federation.privacy is not None and s.comm.is_main:
        data = resolved.data
        note = preset_note(cfg.dp, cfg.data.num_clients, min(map(data.train_size, range(data.num_clients))))
        if note:
            print(f"fedmoap: note: {note}", file=sys.stderr)
    s.fingerprints = fingerprints
    return federation, resolved, history, checks


def misfit(s: Setup, exc: StartMismatch) -> FedmoapError:
    """The error of a newest checkpoint that does not fit the run its config builds."""
    return FedmoapError(
        f"checkpoint {checkpoint_path(s.run_dir, s.ckpt['round'])} does not fit this run ({exc}); move it away to "
        "resume from an earlier one"
    )


def zero_shot_checks(cfg: RunConfig, resolved: Resolved, s: Setup) -> dict:
    """Rank 0's warnings before training (numeric class names; a pretrained backbone's zero-shot
    accuracy near chance); returns the checks' entries for results.json."""
    checks: dict = {}
    if not s.comm.is_main:
        return checks
    source = resolved.source
    warn = [sanity.numeric_names(source.classnames)]
    if cfg.model.pretrained or cfg.model.arch.startswith("packaged"):  # random towers: no gate
        zs_cache = resolved.caches.get("features") or FeatureCache(
            resolved.cache_root, resolved.backbone, cfg.data.feature_batch_size, s.fabric.device, stop=s.stop
        )
        checks["zero_shot"] = sanity.zero_shot_check(
            resolved.backbone, source, np.concatenate(resolved.split.test), zs_cache, cfg.data.image_column, cfg.seed
        )
        warn.append(checks["zero_shot"].get("warning"))
    for message in filter(None, warn):
        print(f"fedmoap: warning: {message}", file=sys.stderr)
    return checks


def _fit(
    cfg: RunConfig,
    run_dir: Path,
    progress: bool,
    lock: RunLock,
    where: Progress,
    backbone: Backbone | None,
    transport: Transport | None = None,
) -> dict[str, Any]:
    s = setup(cfg, run_dir)
    t0 = time.perf_counter()
    federation, resolved, history, checks = build(s, backbone, transport)
    setup_s = time.perf_counter() - t0
    stop_during_setup(s.comm, s.stop)  # the last point at which nothing has been written
    claim(run_dir, s.cfg_dict, s.comm, lock, s.seen)  # every rank has checked the run directory
    done = history[-1]["round"] if history else 0
    where.stage, where.done = "start", done
    if s.comm.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not s.resuming:
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)  # an aborted start's curves
            resolved.split.save(run_dir / "split.json")
        if not s.resuming or cfg.fed.rounds > done:  # config.yaml says how far the run goes
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(s.cfg_dict, sort_keys=False))
    rounds_s = loop(s, federation, history, checks, progress, where)
    return {
        "rounds": history,
        "setup_seconds": setup_s,
        "round_seconds": rounds_s,
        "features_computed": resolved.computed,
        "rank": s.comm.rank,
        "world_size": s.comm.world_size,
    }


def loop(s: Setup, federation: Federation, history: list[dict], checks: dict, progress: bool, where: Progress) -> float:
    """Rounds from the newest checkpoint to ``fed.rounds``: each checkpointed, then its client
    states collected, results.json rewritten and its scalars logged; returns the rounds' seconds."""
    cfg, run_dir, comm = s.cfg, s.run_dir, s.comm
    method, server, store, privacy = federation.method, federation.server, federation.store, federation.privacy
    fingerprints = s.fingerprints
    done = where.done
    # a resumed run purges what a killed run logged after its last checkpoint
    logger = (
        TensorBoardLogger(run_dir, name="tensorboard", version=0, **({"purge_step": done + 1} if done else {}))
        if comm.is_main
        else None
    )
    extra = header(
        method=method.name or method.spec()["class_path"],
        seed=cfg.seed,
        num_clients=cfg.data.num_clients,
        config_digest=s.digest,
        world_size=comm.world_size,
        engine=federation.transport.engine,
        engine_run_id=federation.transport.run_id,
        code=code_version(),
        eval_modes=[m for m in evaluation.MODES if m in cfg.eval.modes or m == "local"],
        checks=checks,
        privacy=privacy.summary if privacy is not None else None,  # updated in place every round
    )
    rounds_s = 0.0
    hparams_dir = run_dir / "tensorboard" / "hparams"
    stop = s.stop
    try:
        for r in tqdm(
            range(done + 1, cfg.fed.rounds + 1),
            desc="rounds",
            initial=done,
            total=cfg.fed.rounds,
            disable=not (progress and comm.is_main),
        ):
            where.stage, where.round = "round", r
            t1 = time.perf_counter()
            record = None if comm.any(stop()) else federation.run_round(r, progress, stop)
            if record is None:
                raise Preempted(preempted(comm, stop.signal, r))
            rounds_s += time.perf_counter() - t1
            history.append(record)
            if comm.is_main:
                save_checkpoint(
                    run_dir,
                    r,
                    {
                        "config_digest": s.digest,
                        "server": server.state_dict(),
                        "store": store.state_dict(),
                        "history": history,
                        "backbone": fingerprints,
                        **({"privacy": privacy.state_dict()} if privacy else {}),
                    },
                    cfg.fed.keep_checkpoints,
                )
                where.done = r
                recent = {c for rec in history[-cfg.fed.keep_checkpoints - 1 :] for c in rec["participants"]}
                store.collect_garbage(sorted(recent), cfg.fed.keep_checkpoints, r)
                write_results(run_dir / "results.json", history, extra)
                # after the checkpoint: never logged twice
                logger.log_metrics({**scalars(record), **mode_scalars(record)}, step=r)
                logger.experiment.flush()
        where.stage = "finish"
        # HParams tab: settings -> final numbers; also written by the rerun of a run killed before it
        if comm.is_main and history and (done < cfg.fed.rounds or not any(hparams_dir.glob("events.*"))):
            write_hparams(
                hparams_dir, *hparams(s.cfg_dict, extra["method"], history, neutral_keys()), step=history[-1]["round"]
            )
    finally:
        stop.close()
        if logger is not None:
            logger.finalize("success")
    if comm.is_main:
        write_results(run_dir / "results.json", history, extra)
    comm.barrier()
    return rounds_s
