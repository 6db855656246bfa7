"""Activity heartbeats: progress handed to the next attempt, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import immortal
from immortal import Client, EventType, RetryPolicy, WorkflowContext
from tests.helpers import assert_well_formed, running_worker

QUICK = RetryPolicy(initial_interval=0.1, jitter=0, maximum_attempts=3)
CANCELLED: list[int] = []


@immortal.activity(heartbeat_timeout=1.0, retry=QUICK)
async def resumable(total: int) -> str:
    info = immortal.activity.info()
    if info.attempt > 1:
        return f"attempt {info.attempt} resumed from {info.heartbeat_details}"
    for done in range(1, 4):
        immortal.activity.heartbeat(done)  # progress the next attempt can resume from
        await asyncio.sleep(0.2)
    try:
        await asyncio.sleep(2.0)  # stalls: no heartbeat for longer than the timeout
        immortal.activity.heartbeat(99)  # too late: the hub will say the attempt is over
        await asyncio.sleep(5.0)
    except asyncio.CancelledError:
        CANCELLED.append(info.attempt)
        raise
    return "attempt 1 must not finish"


@immortal.workflow(name="long_job")
async def long_job(ctx: WorkflowContext, name: str) -> str:
    return await ctx.activity(name, 3, result_type=str)


async def test_stalled_attempt_times_out_is_cancelled_and_the_next_resumes(
    nats_url: str, prefix: str, client: Client
) -> None:
    CANCELLED.clear()
    async with running_worker(
        nats_url, prefix, workflows=[long_job], activities=[resumable, steady]
    ):
        handle = await client.start(long_job, "resumable")
        assert await handle.result(timeout=20) == "attempt 2 resumed from 3"
        async with asyncio.timeout(10):
            while not CANCELLED:
                await asyncio.sleep(0.05)
    assert CANCELLED == [1]
    history = await handle.history()
    assert_well_formed(history)
    beats = [e for e in history if e.type is EventType.ACTIVITY_HEARTBEAT]
    assert beats and all(e.attrs["attempt"] == 1 for e in beats)
    timed_out = next(e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED)
    assert timed_out.attrs["failure"]["type"] == "HeartbeatTimeout"
    assert timed_out.attrs["attempt"] == 1
    done = [e for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    assert [e.attrs["attempt"] for e in done] == [2]


THREADS: list[str] = []


@immortal.activity(heartbeat_timeout=1.0, retry=QUICK)
def steady(seconds: int) -> str:
    """A sync activity that blocks its thread, heartbeating as it goes."""
    THREADS.append(threading.current_thread().name)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        immortal.activity.heartbeat({"left": round(deadline - time.monotonic(), 1)})
    return f"done on attempt {immortal.activity.info().attempt}"


@immortal.workflow(name="steady_job")
async def steady_job(ctx: WorkflowContext, seconds: int) -> str:
    return await ctx.activity(steady, seconds)


async def test_blocking_sync_activity_that_heartbeats_keeps_its_lease(
    nats_url: str, prefix: str, client: Client
) -> None:
    # Blocks its thread for 4 s with a 2 s lease and a 1 s heartbeat timeout.
    async with running_worker(
        nats_url, prefix, workflows=[steady_job], activities=[steady], lease=2.0
    ):
        handle = await client.start(steady_job, 4)
        assert await handle.result(timeout=20) == "done on attempt 1"
    history = await handle.history()
    done = next(e for e in history if e.type is EventType.ACTIVITY_COMPLETED)
    assert done.attrs["delivery"] == 1  # never redelivered: the lease held
    assert not any(e.type is EventType.ACTIVITY_ATTEMPT_FAILED for e in history)
    assert sum(e.type is EventType.ACTIVITY_HEARTBEAT for e in history) >= 3
    assert THREADS and THREADS[-1].startswith("activity")
