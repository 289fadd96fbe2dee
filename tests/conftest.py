"""Fixtures shared by the method tests (a test module may define its own ``world``)."""

from __future__ import annotations

import pytest

from tests.worlds import tiny_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny ViT and the synthetic dataset over 2 clients, every input (built once)."""
    return tiny_world(tmp_path_factory.mktemp("tiny2"), 2)
