"""Shared fixtures (helpers live in sim_fixtures.py, importable by every test module)."""

from __future__ import annotations

import pytest
from sim_fixtures import AffineCost


@pytest.fixture
def affine() -> AffineCost:
    return AffineCost()
