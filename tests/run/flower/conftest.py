"""The Flower tests' shared feature cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> list[str]:
    """``--data.feature_cache`` of one directory per test module."""
    return ["--data.feature_cache", str(tmp_path_factory.mktemp("feature_cache"))]
