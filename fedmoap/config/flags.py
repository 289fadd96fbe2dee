"""Metadata flags of settings, config sections' fields and method knobs alike (``field(default=...,
metadata=NEUTRAL)``), a module of its own so that a method can flag its knobs without importing the
sections."""

from __future__ import annotations

__all__ = ["NEUTRAL", "ADDED"]

NEUTRAL = {"neutral": True}
"""Field metadata of settings that do not change results (resume and extension may change them)."""
ADDED = {"added": True}
"""Field metadata of settings added after runs were made without them: their default is what such
runs did, so a stored config.yaml that lacks one means its default, and a value at its default is
left out of the config digest (older runs still resume and extend)."""
