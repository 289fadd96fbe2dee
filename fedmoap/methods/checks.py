"""Backbone checks several methods share (for :meth:`~fedmoap.methods.base.Method.backbone_problems`):
whether a backbone can take vision prompts or deep text prompts."""

from __future__ import annotations

from fedmoap.backbones.base import Backbone

__all__ = ["vision_prompt_problems", "text_depth_problems"]


def vision_prompt_problems(method: str, backbone: Backbone, knob: str, depth: int, hint: str = "") -> list[str]:
    """Why ``backbone`` cannot take ``method``'s vision prompts in ``depth`` blocks (``knob`` names
    the setting): not a ViT, or too few blocks. Empty if it can."""
    if backbone.vision_width is None:
        return [
            f"method {method} needs a ViT image tower: {backbone.describe()} cannot take prompt "
            f"tokens (use an open_clip ViT such as ViT-B-16, or packaged-vit{hint})"
        ]
    if depth > backbone.vision_layers:
        return [f"method.{knob} {depth} exceeds the image tower's {backbone.vision_layers} blocks"]
    return []


def text_depth_problems(backbone: Backbone, depth: int, knob: str = "text_depth") -> list[str]:
    """Why ``backbone``'s text tower cannot take deep text prompts over ``depth`` blocks."""
    if depth > 1 and depth > backbone.text_layers:
        return [
            f"method.{knob} {depth}: {backbone.describe()} takes deep text prompts in at most "
            f"{backbone.text_layers} blocks (open_clip text towers only)"
        ]
    return []
