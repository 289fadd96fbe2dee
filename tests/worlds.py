"""The tiny world most method tests run in: the tiny random ViT and the synthetic dataset split
over a few clients, with every input a method can read (features, tokens, pixels); a whole
``fedmoap fit`` of ``configs/smoke.yaml`` in this process; a small dataset saved in the hub's
format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features
from PIL import Image as PILImage

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config.sections import DataArgs
from fedmoap.data.layouts import FEDBN
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.errors import FedmoapError
from fedmoap.inputs.features import FeatureCache
from fedmoap.inputs.federated_data import FederatedData, gather_inputs
from fedmoap.inputs.pixels import PixelCache
from fedmoap.methods.base import INPUTS

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
PIXEL = [[[10, 20, 30]] * 4] * 4
"""A 4x4 RGB image, as nested lists (the datasets ``Image`` feature takes them)."""


def tiny_world(
    root: Path, num_clients: int, alpha: float = 0.5, num_views: int = 0, partition: str = "dirichlet"
) -> tuple[OpenCLIPBackbone, list[str], FederatedData]:
    """(backbone, class names, federated data) with caches under ``root``; 4 shots per class and
    client, at most 12 test images per client, split and backbone from seed 0."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    args = DataArgs(
        source="synthetic",
        num_clients=num_clients,
        partition=partition,
        alpha=alpha,
        shots=4,
        max_test_per_client=12,
        num_views=num_views,
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
        backbone=backbone,
    )
    return backbone, source.classnames, data


def pathological_world(root: Path, num_clients: int = 4) -> tuple[OpenCLIPBackbone, list[str], FederatedData]:
    """(backbone, class names, federated data) as :func:`tiny_world`, but the synthetic data split
    pathologically (each client a few classes) and no augmented views."""
    return tiny_world(root, num_clients, alpha=0.1, partition="pathological")


def grads(module, loss) -> dict:
    """Every parameter's gradient of ``loss`` (zeros where it has none), from cleared gradients."""
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}


def same_state(a, b, where: str) -> None:
    """Assert nested dicts of tensors (and other values) ``a`` and ``b`` are equal, naming the path that is not."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


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
    server=None,
    transport=None,
    start=None,
):
    """A federation of ``method`` (a Method instance) over ``world``'s data, built by
    :func:`fedmoap.federation.build.assemble` as ``fedmoap fit`` builds one, with the client store
    ``store`` (a ClientStore, or its directory); ``keep`` overrides the method's optimizer-state
    policy; ``train``: other ``train.*`` settings; ``server``, ``transport`` and ``start``: the
    builder's (None: its defaults)."""
    from fedmoap.config.sections import DPArgs, EvalArgs, FedArgs, TrainArgs
    from fedmoap.federation.build import FRESH, assemble
    from fedmoap.federation.config import RunConfig
    from fedmoap.federation.rounds import default_fabric
    from fedmoap.federation.store import ClientStore

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
    return assemble(
        cfg,
        data,
        backbone,
        fabric=default_fabric(),
        store=store if isinstance(store, ClientStore) else ClientStore(store),
        start=start or FRESH,
        server=server,
        transport=transport,
        classes=classes,
        held_out=list(held_out),
    )


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


COOP = {
    "oxford_flowers": (
        "OxfordFlowers",
        "jpg",
        [
            (None, n)
            for n in (
                "pink primrose",
                "hard-leaved pocket orchid",
                "canterbury bells",
                "sweet pea",
                "english marigold",
                "tiger lily",
                "moon orchid",
                "bird of paradise",
                "monkshood",
                "globe thistle",
                "snapdragon",
                "colt's foot",
            )
        ],
        lambda stem, k, i: f"image_{100 * k + i + 1:05d}.jpg",
    ),
    "oxford_pets": (
        "OxfordPets",
        "images",
        [
            (s, s.lower())
            for s in (
                "Abyssinian",
                "american_bulldog",
                "american_pit_bull_terrier",
                "basset_hound",
                "beagle",
                "Bengal",
                "Birman",
                "Bombay",
                "boxer",
                "British_Shorthair",
                "chihuahua",
                "Egyptian_Mau",
            )
        ],
        lambda stem, k, i: f"{stem}_{i + 1}.jpg",
    ),
    "food-101": (
        "Food101",
        "images",
        [
            (n, n)
            for n in (
                "apple_pie",
                "baby_back_ribs",
                "baklava",
                "beef_carpaccio",
                "beef_tartare",
                "beet_salad",
                "beignets",
                "bibimbap",
                "bread_pudding",
                "breakfast_burrito",
                "bruschetta",
                "caesar_salad",
            )
        ],
        lambda stem, k, i: f"{stem}/{1000 * k + i}.jpg",
    ),
    "caltech-101": (
        "Caltech101",
        "101_ObjectCategories",
        [
            ("Faces", "face"),
            ("Leopards", "leopard"),
            ("Motorbikes", "motorbike"),
            ("accordion", "accordion"),
            ("airplanes", "airplane"),
            ("anchor", "anchor"),
            ("ant", "ant"),
            ("barrel", "barrel"),
            ("bass", "bass"),
            ("beaver", "beaver"),
            ("binocular", "binocular"),
            ("bonsai", "bonsai"),
        ],
        lambda stem, k, i: f"{stem}/image_{i + 1:04d}.jpg",
    ),
    "dtd": (
        "DescribableTextures",
        "images",
        [
            (n, n)
            for n in (
                "banded",
                "blotchy",
                "braided",
                "bubbly",
                "bumpy",
                "chequered",
                "cobwebbed",
                "cracked",
                "crosshatched",
                "crystalline",
                "dotted",
                "fibrous",
            )
        ],
        lambda stem, k, i: f"{stem}/{stem}_{i + 1:04d}.jpg",
    ),
}
"""CoOp dataset folder -> (split file name, image folder, [(path stem, class name)] in label order,
path of image i of a class). Twelve classes each, named and laid out as in CoOp's split files."""


COOP_PER_CLASS = {"train": 2, "val": 1, "test": 2}
"""Images per class in each split of :func:`build_coop`'s datasets."""


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path, "JPEG")


def build_coop(root: Path, folder: str) -> Path:
    """A CoOp dataset folder: images under its image folder, ``split_zhou_<Name>.json``."""
    name, images, classes, path = COOP[folder]
    base = root / folder
    split, seed = {}, 0
    for part, per_class in COOP_PER_CLASS.items():
        split[part] = []
        for k, (stem, classname) in enumerate(classes):
            for _ in range(per_class):
                rel = path(stem, k, seed)
                _image(base / images / rel, seed)
                split[part].append([rel, k, classname])
                seed += 1
    (base / f"split_zhou_{name}.json").write_text(json.dumps(split))
    return base


def build_fedbn(root: Path, kind: str) -> Path:
    """FedBN's data folder for one benchmark: ``<folder>/<domain>_<split>.pkl`` (a pickled pair
    of numpy arrays: image paths relative to the data folder, class names) and the images."""
    spec = FEDBN[kind]
    data, seed = root / kind, 0
    for domain in spec.domains:
        for split in ("train", "test"):
            paths = [
                f"{spec.folder}/{domain}/{c}/{domain}_{k:03d}_{seed + k:06d}.jpg" for k, c in enumerate(spec.classes)
            ]
            for k, p in enumerate(paths):
                _image(data / p, seed + k)
            seed += len(paths)
            with open(data / spec.folder / f"{domain}_{split}.pkl", "wb") as f:
                pickle.dump((np.array(paths), np.array(spec.classes)), f)
    return data


def one_line_error(args: DataArgs, culprit: str) -> None:
    """Assert that loading ``args.source`` stops with one line of FedmoapError naming ``culprit``."""
    with pytest.raises(FedmoapError) as exc:
        load_source(args)
    message = str(exc.value)
    assert "\n" not in message and culprit in message, message


def coop_case(base: Path, case: str) -> tuple[str, str]:
    """Break :func:`build_coop`'s oxford_flowers folder ``base`` as ``case`` says; (data.source, culprit)."""
    split_file = base / "split_zhou_OxfordFlowers.json"
    split = json.loads(split_file.read_text())
    if case == "no_split_file":
        split_file.unlink()
        return f"coop:{base}", "split_zhou_"
    if case == "missing_val":
        del split["val"]
        culprit = "'val'"
    elif case == "entry_without_name":
        split["train"][3] = split["train"][3][:2]
        culprit = "train[3]"
    elif case == "label_named_twice":
        split["test"][0][2] = "not a flower"
        culprit = "label 0"
    elif case == "missing_image":
        (base / "jpg" / split["test"][5][0]).unlink()
        culprit = split["test"][5][0]
    split_file.write_text(json.dumps(split))
    return f"coop:{base}", culprit


def method_federation(world, name: str, tmp_path: Path, **knobs):
    """A federation of the registered method ``name`` (``n_ctx`` 4, ``knobs`` over it) on ``world``,
    its client store under ``tmp_path``."""
    from fedmoap.methods import registry

    return tiny_federation(world, registry()[name](**{**{"n_ctx": 4}, **knobs}), tmp_path / "clients")


def a_batch(fed, cid: int = 0) -> dict:
    """Client ``cid``'s first training batch (at most 8 records) of round 0."""
    return next(iter(fed.data.train_batches(cid, 1, 8)(0)))
