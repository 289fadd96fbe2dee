"""The tiny world most method tests run in: the tiny random ViT and the synthetic dataset split
over a few clients, with every input a method can read (features, tokens, pixels); a whole
``fedmoap fit`` of ``configs/smoke.yaml`` in this process; a small dataset saved in the hub's
format."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, DatasetDict, Features

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.federated_data import FederatedData, gather_inputs
from fedmoap.inputs.pixels import PixelCache
from fedmoap.methods.base import INPUTS

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
PIXEL = [[[10, 20, 30]] * 4] * 4
"""A 4x4 RGB image, as nested lists (the datasets ``Image`` feature takes them)."""


def tiny_world(
    root: Path, num_clients: int, alpha: float = 0.5, num_views: int = 0
) -> tuple[OpenCLIPBackbone, list[str], FederatedData]:
    """(backbone, class names, federated data) with caches under ``root``; 4 shots per class and
    client, at most 12 test images per client, split and backbone from seed 0."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    args = DataArgs(
        source="synthetic", num_clients=num_clients, alpha=alpha, shots=4, max_test_per_client=12, num_views=num_views
    )
    source = load_source(args)
    split = make_split(args, source, seed=0)
    data = gather_inputs(
        INPUTS,
        args,
        source,
        split,
        FeatureCache(root, backbone),
        FeatureCache(root, backbone, tokens=True),
        PixelCache(root, backbone),
        seed=0,
    )
    data.backbone = backbone
    return backbone, source.classnames, data


def tiny_client(world, name: str, cid: int = 0, batch_size: int = 8, **knobs):
    """Method ``name``'s client module (``knobs`` set) on ``world``, made a fresh client ``cid``
    holding the server's initial payload."""
    from fedmoap.config.sections import TrainArgs
    from fedmoap.methods import registry
    from fedmoap.methods.base import RunContext

    backbone, names, data = world
    run = RunContext(0, data.num_clients, TrainArgs(local_epochs=1, batch_size=batch_size), True)
    module = registry()[name](**knobs).build_client(backbone, names, run)
    module.load_client(cid, None)
    module.receive(module.global_init())
    return module


def first_batch(world, batch_size: int = 8, cid: int = 0) -> dict:
    """Client ``cid``'s first training batch of round 1."""
    return next(iter(world[2].train_batches(cid, 1, batch_size)(0)))


def tiny_federation(
    world,
    method,
    store,
    *,
    participation: float = 1.0,
    rounds: int = 3,
    seed: int = 0,
    keep: bool | None = None,
    dp=None,
    eval_args=None,
    classes=None,
    held_out=(),
    local_epochs: int = 1,
    batch_size: int = 8,
    train: dict | None = None,
):
    """A federation of ``method`` (a Method instance) over ``world``'s data, assembled by
    :func:`fedmoap.federation.build.assemble` as ``fedmoap fit`` assembles one, with its client store in
    ``store``; ``keep`` overrides the method's optimizer-state policy; ``train``: other
    ``train.*`` settings."""
    from fedmoap.config.sections import DPArgs, EvalArgs, FedArgs, TrainArgs
    from fedmoap.federation.build import assemble
    from fedmoap.federation.config import RunConfig
    from fedmoap.federation.rounds import default_fabric

    backbone, data = world[0], world[-1]
    policy = None if keep is None else ("keep" if keep else "reset")
    cfg = RunConfig(
        method=method,
        seed=seed,
        data=DataArgs(num_clients=data.num_clients),
        train=TrainArgs(local_epochs=local_epochs, batch_size=batch_size, optimizer_state=policy, **(train or {})),
        fed=FedArgs(rounds=rounds, participation=participation),
        eval=eval_args or EvalArgs(),
        dp=dp or DPArgs(),
    )
    return assemble(cfg, data, backbone, store=store, fabric=default_fabric(), classes=classes, held_out=list(held_out))


def saved_dataset(root: Path, train: dict, test: dict, features: Features) -> str:
    """``train`` and ``test`` (column -> values) saved under ``root`` as a DatasetDict with
    ``features``: a ``data.source`` path."""
    DatasetDict(
        train=Dataset.from_dict(train, features=features), test=Dataset.from_dict(test, features=features)
    ).save_to_disk(str(root))
    return str(root)


def fit_smoke(run_dir: Path, *args: str, cache: Path | None = None, threads: int | None = 1) -> Path:
    """``fedmoap fit --config configs/smoke.yaml ARGS`` into ``run_dir``, in this process, with the
    feature cache ``cache`` (default: ``cache`` beside ``run_dir``), no progress bar and ``threads``
    torch threads (None: torch's default); asserts exit 0 and returns ``run_dir``."""
    from fedmoap.run.cli import main

    cache = run_dir.parent / "cache" if cache is None else cache
    tail = ["--run_dir", str(run_dir), "--data.feature_cache", str(cache), "--progress", "false"]
    tail += [] if threads is None else ["--fabric.threads", str(threads)]
    assert main(["fit", "--config", str(SMOKE), *args, *tail]) == 0
    return run_dir


def results(run_dir: Path) -> dict:
    """A finished run's ``results.json``."""
    return json.loads((run_dir / "results.json").read_text())


def smoke_fit(tmp_path: Path, *extra: str, run: str = "run") -> dict:
    """:func:`fit_smoke` into ``tmp_path / run`` with torch's default threads; its results.json."""
    return results(fit_smoke(tmp_path / run, *extra, threads=None))
