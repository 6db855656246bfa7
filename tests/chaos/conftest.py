"""Fixtures of the chaos suite (``just chaos``; outside the default run)."""

from __future__ import annotations

import random

import pytest


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--chaos-seed")
    return int(seed) if seed is not None else random.randrange(1, 1_000_000)


@pytest.fixture
def chaos_workflows(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--chaos-workflows"))
