"""Backbones: frozen CLIP-like models behind one interface (:class:`Backbone`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedmoap.backbones.base import Backbone, PromptSlots

if TYPE_CHECKING:
    from fedmoap.config.sections import ModelArgs

__all__ = ["Backbone", "PromptSlots", "build_backbone"]


def build_backbone(args: ModelArgs, seed: int = 0) -> Backbone:
    """The frozen backbone ``args`` names: ``packaged-towers`` (offline default), ``packaged-vit``
    (offline ViT for vision prompts) or open_clip."""
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    if args.arch == "packaged-vit":
        from fedmoap.backbones.packaged_vit import DEFAULT_IMAGE_SIZE, PackagedViTBackbone

        return PackagedViTBackbone.build(cache_dir, args.image_size or DEFAULT_IMAGE_SIZE, args.invert_images)
    if args.arch == "packaged-towers":
        from fedmoap.backbones.packaged import PackagedTowersBackbone

        return PackagedTowersBackbone.build(
            cache_dir=cache_dir, image_size=args.image_size or 224, invert=args.invert_images
        )
    from fedmoap.backbones.openclip import OpenCLIPBackbone

    return OpenCLIPBackbone.build(args.arch, args.pretrained, args.cache_dir, seed)
