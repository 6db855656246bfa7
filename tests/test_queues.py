"""Queue depth and lag: the numbers an autoscaler watches."""

from __future__ import annotations

import subprocess
import sys

from immortal import Client
from tests.helpers import running_worker
from tests.workflows import three_step


async def test_backlog_shows_waiting_work_and_drains(
    nats_url: str, prefix: str, client: Client
) -> None:
    handles = [await client.start(three_step, i, queue="bursty") for i in range(5)]
    # No worker has served "bursty" yet: the queue is known, its tasks wait in the stream.
    assert "bursty" in {q.queue for q in await client.queues()}
    async with running_worker(
        nats_url, prefix, queues=["bursty"], workflow_slots=1, activity_slots=1
    ):
        for h in handles:
            assert await h.result(timeout=30) in {2 * i + i * i for i in range(5)}
        drained = {q.queue: q for q in await client.queues()}["bursty"]
    assert (drained.workflow_backlog, drained.activity_backlog) == (0, 0)
    listed = subprocess.run(
        [sys.executable, "-m", "immortal_hub", "queues", "-s", nats_url, "--prefix", prefix],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "bursty" in listed.stdout


async def test_backlog_is_counted_once_a_worker_consumer_exists(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, queues=["q2"]):
        pass  # the consumers for q2 now exist; nobody serves them
    for i in range(3):
        await client.start(three_step, i, queue="q2")
    q2 = {q.queue: q for q in await client.queues()}["q2"]
    assert q2.workflow_backlog == 3 and q2.workflow_in_flight == 0
