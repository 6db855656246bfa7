"""Worker registration and discovery: who is alive, and what they serve."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from immortal import Client
from tests.helpers import running_worker


async def test_live_workers_are_listed_with_their_capabilities(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, worker_id="w-disc", activity_slots=4):
        live = await client.workers()
        assert [w.worker for w in live] == ["w-disc"]
        w = live[0]
        assert w.queues == ["default"] and w.slots == {"workflow": 256, "activity": 4}
        assert "three_step" in w.workflows and "double" in w.activities
        assert await client.workers("some-other-queue") == []
        listed = subprocess.run(
            [sys.executable, "-m", "immortal_hub", "workers", "-s", nats_url, "--prefix", prefix],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "w-disc" in listed.stdout and "three_step" in listed.stdout
    # A stopped worker deregisters.
    assert await client.workers() == []


async def test_starting_an_unserved_type_says_so_and_still_waits(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="immortal._client"):
        handle = await client.start("nobody_serves_me", 1)
    assert "no live worker on queue 'default' serves workflow 'nobody_serves_me'" in caplog.text
    assert (await handle.describe()).status.value == "running"
