"""Retries you can trust: policies, every attempt recorded, durable backoff."""

from __future__ import annotations

import asyncio

import pytest

import immortal
from immortal import (
    ApplicationError,
    Client,
    EventType,
    RetryPolicy,
    WorkflowContext,
    WorkflowFailedError,
)
from tests.helpers import assert_well_formed, running_worker, wait_for_history
from tests.procs import start_hub

FAST = RetryPolicy(initial_interval=0.3, backoff_coefficient=2.0, jitter=0.2, maximum_attempts=5)
CALLS: list[int] = []


@immortal.activity(retry=FAST)
async def flaky(x: int) -> int:
    attempt = immortal.activity.info().attempt
    CALLS.append(attempt)
    if attempt < 3:
        raise ApplicationError(f"flake {attempt}", type="Flake")
    return x * 10


@immortal.activity(retry=FAST)
async def refuses(x: int) -> int:
    raise ApplicationError("card declined", type="CardDeclined", non_retryable=True)


@immortal.activity(retry=RetryPolicy(initial_interval=0.1, maximum_attempts=2, jitter=0))
async def always_fails(x: int) -> int:
    raise ValueError(f"bad value {x} on attempt {immortal.activity.info().attempt}")


@immortal.workflow(name="retrying")
async def retrying(ctx: WorkflowContext, name: str, x: int) -> int:
    return await ctx.activity(name, x, result_type=int)


ACTIVITIES = [flaky, refuses, always_fails]


def _attempt_events(history: list[immortal.HistoryEvent]) -> list[immortal.HistoryEvent]:
    kinds = (
        EventType.ACTIVITY_ATTEMPT_FAILED,
        EventType.ACTIVITY_ATTEMPT_SCHEDULED,
        EventType.ACTIVITY_COMPLETED,
        EventType.ACTIVITY_FAILED,
    )
    return [e for e in history if e.type in kinds]


async def test_fails_twice_then_succeeds_with_backoff_in_bounds(
    nats_url: str, prefix: str, client: Client
) -> None:
    CALLS.clear()
    async with running_worker(nats_url, prefix, workflows=[retrying], activities=ACTIVITIES):
        handle = await client.start(retrying, "flaky", 4)
        assert await handle.result(timeout=30) == 40
    history = await handle.history()
    assert_well_formed(history)
    assert CALLS == [1, 2, 3]
    attempts = _attempt_events(history)
    assert [(e.type, e.attrs.get("attempt")) for e in attempts] == [
        (EventType.ACTIVITY_ATTEMPT_FAILED, 1),
        (EventType.ACTIVITY_ATTEMPT_SCHEDULED, 2),
        (EventType.ACTIVITY_ATTEMPT_FAILED, 2),
        (EventType.ACTIVITY_ATTEMPT_SCHEDULED, 3),
        (EventType.ACTIVITY_COMPLETED, 3),
    ]
    for failed, resumed in ((attempts[0], attempts[1]), (attempts[2], attempts[3])):
        n = failed.attrs["attempt"]
        base = FAST.base_delay(n) * 1000
        assert base * 0.8 <= failed.attrs["backoff_ms"] <= base * 1.2  # the policy's jitter
        assert failed.attrs["failure"]["type"] == "Flake"
        assert failed.attrs["failure"]["message"] == f"flake {n}"
        assert "Traceback" in failed.attrs["failure"]["traceback"]
        assert failed.attrs["worker"] and failed.attrs["ended_ts"] >= failed.attrs["started_ts"]
        # The durable timer released the next attempt at its due time, not before.
        waited = resumed.ts - failed.ts
        assert failed.attrs["backoff_ms"] - 5 <= waited <= failed.attrs["backoff_ms"] + 1000
    completions = [e for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    assert len(completions) == 1  # the result is delivered once


async def test_non_retryable_error_stops_at_one_attempt(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[retrying], activities=ACTIVITIES):
        handle = await client.start(retrying, "refuses", 1)
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=20)
    history = await handle.history()
    attempts = _attempt_events(history)
    assert [e.type for e in attempts] == [EventType.ACTIVITY_FAILED]
    assert attempts[0].attrs["reason"] == "non-retryable error"
    cause = info.value.cause.__cause__
    assert isinstance(cause, ApplicationError) and cause.type == "CardDeclined"


async def test_exhausted_policy_surfaces_the_last_error(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[retrying], activities=ACTIVITIES):
        handle = await client.start(retrying, "always_fails", 7)
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=20)
    attempts = _attempt_events(await handle.history())
    assert [e.type for e in attempts] == [
        EventType.ACTIVITY_ATTEMPT_FAILED,
        EventType.ACTIVITY_ATTEMPT_SCHEDULED,
        EventType.ACTIVITY_FAILED,
    ]
    assert attempts[-1].attrs["reason"] == "2 attempts used"
    activity_error = info.value.cause
    assert activity_error.type == "ActivityError"
    last = activity_error.__cause__
    assert isinstance(last, ApplicationError)
    assert (last.type, last.message) == ("ValueError", "bad value 7 on attempt 2")


SLOW = RetryPolicy(initial_interval=3.0, jitter=0, maximum_attempts=3)


@immortal.activity(retry=SLOW)
async def fails_once(x: int) -> int:
    if immortal.activity.info().attempt == 1:
        raise ApplicationError("first attempt fails")
    return x + 1


@immortal.workflow(name="waits_out_backoff")
async def waits_out_backoff(ctx: WorkflowContext, x: int) -> int:
    return await ctx.activity(fails_once, x)


@pytest.mark.parametrize("restart_after", [0.5, 4.0])  # before, and after, the timer is due
async def test_hub_killed_during_backoff_retries_once_at_due_time(
    nats_url: str, prefix: str, restart_after: float
) -> None:
    hub = await start_hub(nats_url, prefix)
    try:
        async with (
            running_worker(
                nats_url, prefix, workflows=[waits_out_backoff], activities=[fails_once]
            ),
            Client(nats_url, prefix=prefix) as client,
        ):
            handle = await client.start(waits_out_backoff, 1)
            history = await wait_for_history(
                client,
                handle.workflow_id,
                handle.run_id,
                lambda h: any(e.type is EventType.ACTIVITY_ATTEMPT_FAILED for e in h),
            )
            await hub.kill()
            await asyncio.sleep(restart_after)
            hub = await start_hub(nats_url, prefix)
            assert await handle.result(timeout=30) == 2
            history = await handle.history()
    finally:
        await hub.stop()
    assert_well_formed(history)
    failed = next(e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED)
    resumed = [e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_SCHEDULED]
    assert len(resumed) == 1  # once
    assert resumed[0].ts >= failed.attrs["retry_at"] - 5  # not before it was due
    assert sum(e.type is EventType.ACTIVITY_COMPLETED for e in history) == 1


def test_retry_policy_math_and_validation() -> None:
    p = RetryPolicy(initial_interval=1, backoff_coefficient=3, maximum_interval=5, jitter=0)
    assert [p.base_delay(n) for n in (1, 2, 3)] == [1, 3, 5]
    assert p.retries(4, "X", False) and not p.retries(5, "X", False)
    assert not RetryPolicy(non_retryable_error_types=("Fatal",)).retries(1, "Fatal", False)
    assert RetryPolicy(maximum_attempts=0).retries(10_000, "X", False)
    assert RetryPolicy.from_wire(FAST.to_wire()) == RetryPolicy(
        initial_interval=0.3, backoff_coefficient=2.0, maximum_interval=60.0, jitter=0.2
    )
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
