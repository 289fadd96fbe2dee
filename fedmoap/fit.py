"""``fedmoap fit``: validate, set up (backbone, data, split, features), then run or resume rounds.

Nothing is written to the run directory until the config, the dataset, the split and the latest
checkpoint have all been checked, so a bad input never damages an earlier run.
"""
from __future__ import annotations

import dataclasses
import signal
import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.loggers import TensorBoardLogger
from tqdm.auto import tqdm

from fedmoap.backbones import build_backbone
from fedmoap.checkpoint import load_latest, save_checkpoint
from fedmoap.config import RunConfig
from fedmoap.data.sources import load_source
from fedmoap.data.split import load_split, make_split
from fedmoap.errors import FedmoapError
from fedmoap.federated_data import gather_features
from fedmoap.features import FeatureCache
from fedmoap.io import atomic_write_text
from fedmoap.methods import METHODS
from fedmoap.methods.base import initial_prompt
from fedmoap.results import scalars, write_results
from fedmoap.rounds import Federation
from fedmoap.store import DiskClientStore
from fedmoap.distributed import Comm
from fedmoap.preemption import Preempted, requeue, stop_flag

# Settings that do not change a run's numbers: a run may be resumed with other values.
NEUTRAL_KEYS = {("fabric", "accelerator"), ("fabric", "devices"), ("fabric", "num_nodes"),
                ("fabric", "strategy"), ("fabric", "threads"), ("fed", "keep_checkpoints"), ("data", "feature_cache"),
                ("data", "feature_batch_size"), ("model", "cache_dir"), ("train", "eval_batch_size"),
                ("fed", "rounds")}  # extending a run gives the numbers a longer run would
DEFAULT_CACHE = Path("~/.cache/fedmoap")


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_digest(cfg: dict[str, Any]) -> str:
    """Digest of the settings that determine results (the neutral keys left out)."""
    kept = {s: ({k: v for k, v in sec.items() if (s, k) not in NEUTRAL_KEYS} if isinstance(sec, dict) else sec)
            for s, sec in cfg.items()}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def validate(cfg: RunConfig) -> None:
    """Checks beyond types: ranges and combinations, each error naming its key."""
    checks = [
        (cfg.fed.rounds >= 1, "fed.rounds must be >= 1"),
        (0 < cfg.fed.participation <= 1, "fed.participation must be in (0, 1]"),
        (cfg.data.num_clients >= 1, "data.num_clients must be >= 1"),
        (cfg.data.shots is None or cfg.data.shots >= 1, "data.shots must be >= 1 or null"),
        (cfg.data.num_views >= 0, "data.num_views must be >= 0"),
        (cfg.prompt.n_ctx >= 1 or cfg.prompt.ctx_init, "prompt.n_ctx must be >= 1"),
        ("{}" in cfg.prompt.template, "prompt.template must contain {} for the class name"),
        ("{}" in cfg.prompt.zeroshot_template, "prompt.zeroshot_template must contain {}"),
        (cfg.train.local_epochs >= 1, "train.local_epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.pfedmoap.num_experts >= 0, "pfedmoap.num_experts must be >= 0"),
        (cfg.pfedmoap.d_gating % cfg.pfedmoap.heads == 0, "pfedmoap.d_gating must be divisible by pfedmoap.heads"),
        (cfg.data.partition != "domain_dirichlet" or cfg.data.domain_column,
         "data.partition domain_dirichlet needs data.domain_column"),
    ]
    for ok, message in checks:
        if not ok:
            raise FedmoapError(message)
    if cfg.pfedmoap.experts_per_client:
        bad = [c for c in cfg.pfedmoap.experts_per_client if not 0 <= c < cfg.data.num_clients]
        if bad:
            raise FedmoapError(f"pfedmoap.experts_per_client names clients {bad} outside 0..{cfg.data.num_clients - 1}")


def check_run_dir(run_dir: Path, cfg_dict: dict[str, Any]) -> bool:
    """True if ``run_dir`` holds this run already (resume); an error if it holds another one."""
    stored_path = run_dir / "config.yaml"
    if not stored_path.exists():
        if run_dir.exists() and any(p.name != "tensorboard" for p in run_dir.iterdir()):
            raise FedmoapError(f"run_dir {run_dir} is not empty and holds no fedmoap run (config.yaml); "
                               "choose an empty or new directory")
        return False
    try:
        stored = yaml.safe_load(stored_path.read_text())
    except yaml.YAMLError as exc:
        raise FedmoapError(f"{stored_path} is not readable YAML ({exc})") from None
    if config_digest(stored) != config_digest(cfg_dict):
        diffs = [f"{s}.{k}: {stored.get(s, {}).get(k)!r} -> {v!r}" for s, sec in cfg_dict.items()
                 if isinstance(sec, dict) for k, v in sec.items()
                 if (s, k) not in NEUTRAL_KEYS and stored.get(s, {}).get(k) != v]
        diffs += [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in cfg_dict.items()
                  if not isinstance(v, dict) and stored.get(k) != v]
        raise FedmoapError(f"run_dir {run_dir} holds a run with another config ({'; '.join(diffs[:5])}); "
                           "use a new --run_dir to start a different run")
    return True


def fit(cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the federated training ``cfg`` describes, writing into ``run_dir``.

    Launches Fabric's processes (``cfg.fabric``); every rank runs this function. Raises
    :class:`~fedmoap.preemption.Preempted` after a SIGUSR1/SIGTERM (requeueing under SLURM).
    """
    run_dir = Path(run_dir)
    validate(cfg)
    cfg_dict = config_dict(cfg)
    digest = config_digest(cfg_dict)
    f = cfg.fabric
    # slurm/array.sbatch runs single-process jobs without srun on purpose
    warnings.filterwarnings("ignore", message="The `srun` command is available")
    fabric = L.Fabric(accelerator=f.accelerator, devices=f.devices, num_nodes=f.num_nodes,
                      strategy=f.strategy, precision=f.precision)
    fabric.launch()
    comm = Comm.from_fabric(fabric)
    if f.threads:
        torch.set_num_threads(f.threads)
    torch.set_float32_matmul_precision("highest")
    resuming = check_run_dir(run_dir, cfg_dict)
    t0 = time.perf_counter()
    backbone = build_backbone(cfg.model, cfg.seed).to(fabric.device)
    source = load_source(cfg.data)
    split = (load_split(run_dir / "split.json", source, cfg.data.num_clients) if resuming
             else make_split(cfg.data, source, cfg.seed))
    ckpt = load_latest(run_dir, digest) if resuming else None
    cache_root = Path(cfg.data.feature_cache or DEFAULT_CACHE / "features").expanduser()
    cache = FeatureCache(cache_root, backbone, cfg.data.feature_batch_size, fabric.device)
    with fabric.rank_zero_first():  # rank 0 encodes, the others then read the cache
        data = gather_features(cfg.data, source, split, cache)
    setup_s = time.perf_counter() - t0

    method = METHODS[cfg.method]
    module = method.client(backbone, source.classnames, cfg).to(fabric.device)
    server = method.server(cfg, initial_prompt(backbone, cfg))
    store = DiskClientStore(run_dir / "clients")
    history: list[dict] = []
    if ckpt is not None:
        server.load_state_dict(ckpt["server"])
        store.load_state_dict(ckpt["store"])
        history = list(ckpt["history"])
    comm.barrier()  # every rank has checked the run directory before rank 0 writes into it
    done = history[-1]["round"] if history else 0
    if comm.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming or cfg.fed.rounds > done:  # config.yaml says how far the run goes
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
        if not resuming:
            split.save(run_dir / "split.json")

    federation = Federation(cfg, module, server, store, data, comm, fabric.autocast())
    logger = TensorBoardLogger(run_dir, name="tensorboard", version=0) if comm.is_main else None
    extra = {"method": cfg.method, "seed": cfg.seed, "num_clients": cfg.data.num_clients,
             "config_digest": digest, "world_size": comm.world_size}
    stop = stop_flag()
    rounds_s = 0.0
    try:
        for t in tqdm(range(done + 1, cfg.fed.rounds + 1), desc="rounds", initial=done,
                      total=cfg.fed.rounds, disable=not (progress and comm.is_main)):
            t1 = time.perf_counter()
            record = federation.run_round(t, progress, stop)
            if record is None:
                how = (requeue() if stop.signal == signal.SIGUSR1 else
                       "not requeued (SIGTERM: a cancel, or SLURM requeues a preempted job itself)")
                raise Preempted(f"stopped by signal {stop.signal} during round {t}; the checkpoint "
                                f"of round {t - 1} is the resume point; {how}")
            rounds_s += time.perf_counter() - t1
            history.append(record)
            if comm.is_main:
                logger.log_metrics(scalars(record), step=t)
                logger.experiment.flush()
                save_checkpoint(run_dir, t, {"config_digest": digest, "server": server.state_dict(),
                                             "store": store.state_dict(), "history": history},
                                cfg.fed.keep_checkpoints)
                recent = {c for r in history[-cfg.fed.keep_checkpoints - 1:] for c in r["participants"]}
                store.collect_garbage(sorted(recent), cfg.fed.keep_checkpoints, t)
                write_results(run_dir / "results.json", history, extra)
    finally:
        stop.close()
        if logger is not None:
            logger.finalize("success")
    if comm.is_main:
        write_results(run_dir / "results.json", history, extra)
    comm.barrier()
    return {"rounds": history, "setup_seconds": setup_s, "round_seconds": rounds_s,
            "features_computed": cache.computed, "rank": comm.rank, "world_size": comm.world_size}
