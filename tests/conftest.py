"""Fixtures: a real nats-server per test (or an external one), a hub, workers, a client."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from immortal import Client
from immortal.testing import NatsServer
from immortal_hub import Hub

# Point the suite at an already running server: IMMORTAL_TEST_NATS_URL=nats://host:4222
EXTERNAL = os.environ.get("IMMORTAL_TEST_NATS_URL")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--nats-url", default=EXTERNAL, help="use this NATS instead of starting one")
    seed = os.environ.get("IMMORTAL_CHAOS_SEED")
    parser.addoption(
        "--chaos-seed",
        type=int,
        default=int(seed) if seed else None,
        help="chaos suite: seed of the workload and the fault schedule (default: random, printed)",
    )
    parser.addoption(
        "--chaos-workflows",
        type=int,
        default=int(os.environ.get("IMMORTAL_CHAOS_WORKFLOWS", "2000")),
        help="chaos suite: workflows per fault class",
    )


@pytest.fixture
async def nats_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NatsServer]:
    url = request.config.getoption("--nats-url")
    if url:
        pytest.skip("this test restarts its own nats-server") if request.node.get_closest_marker(
            "own_server"
        ) else None
    server = NatsServer(store_dir=tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A fresh prefix per test, so tests can share an external server."""
    return "t" + uuid.uuid4().hex[:8] if request.config.getoption("--nats-url") else "imm"


@pytest.fixture
def nats_url(request: pytest.FixtureRequest, nats_server: NatsServer) -> str:
    return str(request.config.getoption("--nats-url") or nats_server.url)


@pytest.fixture
async def hub(nats_url: str, prefix: str) -> AsyncIterator[Hub]:
    h = Hub(nats_url, prefix=prefix)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def client(nats_url: str, prefix: str, hub: Hub) -> AsyncIterator[Client]:
    async with Client(nats_url, prefix=prefix) as c:
        yield c


@pytest.fixture
def test_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory the test workflows and activities of worker processes use to signal
    (``tests.workflows``: stall files and the like)."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.setenv("IMMORTAL_TEST_DIR", str(d))
    return d
