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
