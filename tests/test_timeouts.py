"""Activity and workflow timeouts, enforced with durable timers and recorded as events."""

from __future__ import annotations

import asyncio

import pytest

import immortal
from immortal import Client, EventType, RetryPolicy, WorkflowContext, WorkflowFailedError
from tests.helpers import assert_well_formed, running_worker, wait_for_history

QUICK = RetryPolicy(initial_interval=0.1, jitter=0, maximum_attempts=3)


@immortal.activity(start_to_close=0.5, retry=QUICK)
async def slow_first(x: int) -> str:
    if immortal.activity.info().attempt == 1:
        await asyncio.sleep(2.0)  # well past start-to-close
        return "late"
    return "fast"


@immortal.activity(schedule_to_close=1.0, retry=QUICK)
async def never_in_time(x: int) -> str:
    await asyncio.sleep(5.0)
    return "too late"


@immortal.activity
async def hangs(x: int) -> str:
    await asyncio.sleep(30)
    return "never"


@immortal.workflow(name="timeouts")
async def timeouts(ctx: WorkflowContext, which: str) -> str:
    return await ctx.activity(which, 1, result_type=str)


@immortal.workflow(name="timeouts_then_wait")
async def timeouts_then_wait(ctx: WorkflowContext, which: str) -> str:
    result = await ctx.activity(which, 1, result_type=str)
    await ctx.sleep(2.5)  # still open when a late result arrives (a closed run records none)
    return result


ACTS = [slow_first, never_in_time, hangs]


async def test_start_to_close_times_out_retries_and_ignores_the_late_result(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[timeouts_then_wait], activities=ACTS):
        handle = await client.start(timeouts_then_wait, "slow_first")
        assert await handle.result(timeout=20) == "fast"
        history = await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.type is EventType.ACTIVITY_RESULT_IGNORED for e in h),
        )
    assert_well_formed(history)
    timed_out = next(e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED)
    assert timed_out.attrs["attempt"] == 1
    assert timed_out.attrs["failure"]["type"] == "StartToCloseTimeout"
    done = next(e for e in history if e.type is EventType.ACTIVITY_COMPLETED)
    assert done.attrs["attempt"] == 2
    ignored = next(e for e in history if e.type is EventType.ACTIVITY_RESULT_IGNORED)
    assert ignored.attrs["attempt"] == 1 and ignored.id > done.id
    assert sum(e.type is EventType.ACTIVITY_COMPLETED for e in history) == 1


async def test_schedule_to_close_fails_the_activity(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[timeouts], activities=ACTS):
        handle = await client.start(timeouts, "never_in_time")
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=20)
    last = info.value.cause.__cause__
    assert last is not None and "ScheduleToCloseTimeout" in str(last)
    failed = next(e for e in await handle.history() if e.type is EventType.ACTIVITY_FAILED)
    assert failed.attrs["reason"] == "schedule-to-close timeout"


@pytest.mark.parametrize(
    ("option", "error"),
    [("execution_timeout", "WorkflowTimeout"), ("run_timeout", "WorkflowRunTimeout")],
)
async def test_workflow_timeouts(
    nats_url: str, prefix: str, client: Client, option: str, error: str
) -> None:
    async with running_worker(nats_url, prefix, workflows=[timeouts], activities=ACTS):
        handle = await client.start(timeouts, "hangs", **{option: 1.0})
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=20)
    assert info.value.cause.type == error
    history = await handle.history()
    assert [e.type for e in history].count(EventType.WORKFLOW_FAILED) == 1
    assert (await handle.describe()).status.closed


@immortal.activity(
    schedule_to_start=0.5, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=2)
)
async def prompt(x: int) -> str:
    return "started in time"


@immortal.workflow(name="waits_for_a_worker")
async def waits_for_a_worker(ctx: WorkflowContext, queue: str) -> str:
    return await ctx.activity(prompt, 1, queue=queue)


async def test_schedule_to_start_is_recorded_or_times_out(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(
        nats_url, prefix, workflows=[waits_for_a_worker], activities=[prompt]
    ):
        served = await client.start(waits_for_a_worker, "default")
        assert await served.result(timeout=20) == "started in time"
        unserved = await client.start(waits_for_a_worker, "nobody-serves-this")
        with pytest.raises(WorkflowFailedError) as info:
            await unserved.result(timeout=20)
    started = [e for e in await served.history() if e.type is EventType.ACTIVITY_ATTEMPT_STARTED]
    assert len(started) == 1 and started[0].attrs["attempt"] == 1
    history = await unserved.history()
    timeouts = [
        e.attrs["failure"]["type"]
        for e in history
        if e.type in (EventType.ACTIVITY_ATTEMPT_FAILED, EventType.ACTIVITY_FAILED)
    ]
    assert timeouts == ["ScheduleToStartTimeout", "ScheduleToStartTimeout"]  # 2 attempts
    assert "ScheduleToStartTimeout" in str(info.value.cause.__cause__)
