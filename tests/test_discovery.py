"""Worker registration and discovery: who is alive, and what they serve."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

import immortal
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


@immortal.activity(name="double")
async def double_text(x: str) -> str:  # same name as tests.workflows.double, other types
    return x * 2


async def test_a_second_worker_with_other_code_for_a_name_is_told_and_shown(
    nats_url: str, prefix: str, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.workflows import add, double, three_step

    async with running_worker(nats_url, prefix, worker_id="w-first"):
        # The same definitions again: no conflict.
        with caplog.at_level(logging.WARNING, logger="immortal_worker._worker"):
            async with running_worker(
                nats_url, prefix, worker_id="w-same", workflows=[three_step],
                activities=[double, add],
            ):  # fmt: skip
                pass
        assert "differs between workers" not in caplog.text
        with caplog.at_level(logging.WARNING, logger="immortal_worker._worker"):
            async with running_worker(
                nats_url, prefix, worker_id="w-other", workflows=[], activities=[double_text]
            ):
                listed = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "immortal_hub", "workers", "-s", nats_url,
                     "--prefix", prefix],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
    conflict = (
        "activity 'double' on queue 'default' differs between workers: "
        "w-first has (int) -> int; w-other has (str) -> str"
    )
    assert f"{conflict}: its tasks go to either" in caplog.text
    assert f"CONFLICT: {conflict}" in listed.stdout, listed.stdout
    assert "slots wf 256 / act 64" in listed.stdout
