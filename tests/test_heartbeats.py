"""Activity heartbeats: progress handed to the next attempt, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

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
    async with running_worker(nats_url, prefix, workflows=[long_job], activities=[resumable]):
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
WOKE: list[float] = []  # when the silent attempt's thread woke up (epoch seconds)
SILENT_CANCELLED: list[int] = []
BEAT = RetryPolicy(initial_interval=0.1, jitter=0, maximum_attempts=3)


@immortal.activity(heartbeat_timeout=2.0, retry=BEAT)
def steady(seconds: float) -> str:
    """A sync activity that blocks its thread, heartbeating as it goes."""
    THREADS.append(threading.current_thread().name)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        immortal.activity.heartbeat({"left": round(deadline - time.monotonic(), 1)})
    return f"done on attempt {immortal.activity.info().attempt}"


@immortal.activity(heartbeat_timeout=2.0, retry=BEAT)
def falls_silent(seconds: float) -> str:
    """Attempt 1 heartbeats for 3 s, then blocks its thread without a word; attempt 2 is quick."""
    attempt = immortal.activity.info().attempt
    if attempt > 1:
        return f"done on attempt {attempt}"
    for _ in range(6):
        time.sleep(0.5)
        immortal.activity.heartbeat()
    time.sleep(seconds - 3)
    WOKE.append(time.time())
    try:
        for _ in range(50):  # progress again: the hub answers that the attempt is over
            immortal.activity.heartbeat()
            time.sleep(0.1)
    except immortal.ActivityCancelledError:
        SILENT_CANCELLED.append(attempt)
        raise
    return "attempt 1 must not finish"


@immortal.workflow(name="steady_job")
async def steady_job(ctx: WorkflowContext, name: str, seconds: float) -> str:
    return await ctx.activity(name, seconds, result_type=str)


@pytest.mark.timeout(120)
async def test_20s_blocking_sync_activity_keeps_its_lease_while_heartbeating_and_not_without(
    nats_url: str, prefix: str, client: Client
) -> None:
    """Two threads blocked 20 s under a 3 s lease and a 2 s heartbeat timeout."""
    for seen in (THREADS, WOKE, SILENT_CANCELLED):
        seen.clear()
    async with running_worker(
        nats_url, prefix, workflows=[steady_job], activities=[steady, falls_silent], lease=3.0
    ):
        beating = await client.start(steady_job, "steady", 20)
        silent = await client.start(steady_job, "falls_silent", 20)
        assert await silent.result(timeout=60) == "done on attempt 2"
        assert await beating.result(timeout=60) == "done on attempt 1"
        async with asyncio.timeout(15):
            while not SILENT_CANCELLED:
                await asyncio.sleep(0.05)

    history = await beating.history()
    assert_well_formed(history)
    done = next(e for e in history if e.type is EventType.ACTIVITY_COMPLETED)
    assert (done.attrs["attempt"], done.attrs["delivery"]) == (1, 1)  # the lease held
    assert not any(e.type is EventType.ACTIVITY_ATTEMPT_FAILED for e in history)
    assert sum(e.type is EventType.ACTIVITY_HEARTBEAT for e in history) >= 10
    assert THREADS and THREADS[-1].startswith("activity")

    history = await silent.history()
    assert_well_formed(history)
    last_beat = [e for e in history if e.type is EventType.ACTIVITY_HEARTBEAT][-1]
    failed = next(e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED)
    assert failed.attrs["attempt"] == 1
    assert failed.attrs["failure"]["type"] == "HeartbeatTimeout"
    assert failed.ts - last_beat.ts >= 2000  # not before the heartbeat timeout...
    completed = next(e for e in history if e.type is EventType.ACTIVITY_COMPLETED)
    assert completed.attrs["attempt"] == 2
    assert completed.ts < WOKE[0] * 1000  # ...and retried while attempt 1 was still blocked
    assert SILENT_CANCELLED == [1]
    assert not any(e.type is EventType.ACTIVITY_RESULT_IGNORED for e in history)
