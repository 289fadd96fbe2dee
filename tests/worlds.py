"""The tiny world most method tests run in: the tiny random ViT and the synthetic dataset split
over a few clients, with every input a method can read (features, tokens, pixels)."""
from __future__ import annotations

from pathlib import Path

from fedmoap.backbones.openclip import OpenCLIPBackbone
from fedmoap.config import DataArgs
from fedmoap.data.sources import load_source
from fedmoap.data.split import make_split
from fedmoap.features import FeatureCache
from fedmoap.federated_data import FederatedData, gather_inputs
from fedmoap.methods.base import INPUTS
from fedmoap.pixels import PixelCache


def tiny_world(root: Path, num_clients: int, alpha: float = 0.5,
               num_views: int = 0) -> tuple[OpenCLIPBackbone, list[str], FederatedData]:
    """(backbone, class names, federated data) with caches under ``root``; 4 shots per class and
    client, at most 12 test images per client, split and backbone from seed 0."""
    backbone = OpenCLIPBackbone.build("fedmoap-tiny-vit", None, seed=0)
    args = DataArgs(source="synthetic", num_clients=num_clients, alpha=alpha, shots=4,
                    max_test_per_client=12, num_views=num_views)
    source = load_source(args)
    split = make_split(args, source, seed=0)
    data = gather_inputs(INPUTS, args, source, split, FeatureCache(root, backbone),
                         FeatureCache(root, backbone, tokens=True), PixelCache(root, backbone), seed=0)
    data.backbone = backbone
    return backbone, source.classnames, data


def tiny_client(world, name: str, cid: int = 0, batch_size: int = 8, **knobs):
    """Method ``name``'s client module (``knobs`` set) on ``world``, made a fresh client ``cid``
    holding the server's initial payload."""
    from fedmoap.config import TrainArgs
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
