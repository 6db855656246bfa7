"""The workflow toolbox: durable sleeps, signals, conditions, cancellation, child
workflows, continue-as-new, versioning and status, each against a real hub and server."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

import immortal
from immortal import (
    ActivityError,
    ChildWorkflowError,
    Client,
    EventType,
    RetryPolicy,
    RunStatus,
    WorkflowClosedError,
    WorkflowContext,
    WorkflowFailedError,
    history_from_json,
    history_to_json,
)
from immortal_worker.replay import replay_file
from tests.helpers import assert_well_formed, running_worker, wait_for_history

ONCE = RetryPolicy(maximum_attempts=1)
STOPPED: list[str] = []


@immortal.activity
async def echo(value: str) -> str:
    return value


@immortal.activity(heartbeat_timeout=1.0, retry=ONCE)
async def slow_beating(label: str) -> str:
    try:
        for _ in range(200):
            immortal.activity.heartbeat()
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        STOPPED.append(label)
        raise
    return "finished"


@immortal.workflow
async def napper(ctx: WorkflowContext, seconds: float) -> list[int]:
    before = ctx.now()
    await ctx.sleep(seconds)
    middle = ctx.now()
    await asyncio.sleep(seconds)  # plain asyncio.sleep is durable too
    after = ctx.now()
    return [
        round((middle - before).total_seconds() * 1000),
        round((after - middle).total_seconds() * 1000),
    ]


@immortal.workflow
async def approvals(ctx: WorkflowContext, wanted: int) -> list[str]:
    got = []
    for _ in range(wanted):
        got.append(await ctx.wait_signal("approve", result_type=str))
    return got


@immortal.workflow
async def approval_or_timeout(ctx: WorkflowContext, seconds: float) -> str:
    try:
        return str(await ctx.wait_signal("approve", timeout=seconds))
    except TimeoutError:
        return "timed out"


@immortal.workflow
async def counter(ctx: WorkflowContext, target: int) -> int:
    state = {"n": 0}

    async def listen() -> None:
        while True:
            state["n"] += int(await ctx.wait_signal("add"))
            ctx.set_status({"n": state["n"]})

    listener = asyncio.ensure_future(listen())
    try:
        await ctx.wait_condition(lambda: state["n"] >= target, timeout=30)
    finally:
        listener.cancel()
    return state["n"]


@immortal.workflow
async def tick_counter(ctx: WorkflowContext) -> int:
    return 1


@immortal.workflow
async def cancellable(ctx: WorkflowContext) -> str:
    try:
        return await ctx.activity(slow_beating, "main")
    except asyncio.CancelledError:
        await ctx.activity(echo, "cleanup")  # code may still run activities to clean up
        raise


@immortal.workflow
async def failing_child(ctx: WorkflowContext, n: int) -> int:
    if n < 0:
        raise immortal.ApplicationError("negative input", type="BadInput", non_retryable=True)
    return await ctx.activity(echo, str(n)) and n * 10


@immortal.workflow
async def parent(ctx: WorkflowContext, inputs: list[int]) -> list[str]:
    results = await asyncio.gather(
        *(ctx.child(failing_child, n) for n in inputs), return_exceptions=True
    )
    out = []
    for r in results:
        if isinstance(r, ChildWorkflowError):
            out.append(f"{r.cause.type}: {r.cause.message}")
        else:
            out.append(str(r))
    return out


@immortal.workflow
async def strict_parent(ctx: WorkflowContext) -> int:
    return int(await ctx.child(failing_child, -1))


@immortal.workflow
async def generations(ctx: WorkflowContext, generation: int, total: int) -> str:
    await ctx.activity(echo, f"gen {generation}")
    if generation < total:
        ctx.continue_as_new(generation + 1, total)
    return f"done after {generation} generations"


async def test_sleeps_are_durable_timers(nats_url: str, prefix: str, client: Client) -> None:
    async with running_worker(nats_url, prefix, workflows=[napper]):
        handle = await client.start(napper, 0.3)
        slept = await handle.result(timeout=20)
    assert all(300 <= ms < 2000 for ms in slept), slept  # workflow time moves with the timers
    history = await handle.history()
    assert_well_formed(history)
    started = [e for e in history if e.type is EventType.TIMER_STARTED]
    fired = [e for e in history if e.type is EventType.TIMER_FIRED]
    assert [e.attrs["duration_ms"] for e in started] == [300, 300]
    assert [e.caused_by for e in fired] == [e.id for e in started]
    assert all(e.ts >= e.attrs["due"] for e in fired)  # never early


async def test_signal_before_wait_and_after_wait(
    nats_url: str, prefix: str, client: Client
) -> None:
    handle = await client.start(approvals, 2)
    # Before any worker runs the code: the signal is recorded and buffered.
    await wait_for_history(client, handle.workflow_id, handle.run_id, lambda h: len(h) >= 2)
    await handle.signal("approve", "early")
    async with running_worker(nats_url, prefix, workflows=[approvals]):
        await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: sum(e.type is EventType.WORKFLOW_TASK_COMPLETED for e in h) >= 1,
        )
        await handle.signal("approve", "late")  # the code is now waiting for it
        assert await handle.result(timeout=20) == ["early", "late"]
    history = await handle.history()
    assert_well_formed(history)
    signals = [e.attrs["name"] for e in history if e.type is EventType.WORKFLOW_SIGNALED]
    assert signals == ["approve", "approve"]
    with pytest.raises(WorkflowClosedError):
        await handle.signal("approve", "too late")


async def test_wait_signal_times_out(nats_url: str, prefix: str, client: Client) -> None:
    async with running_worker(nats_url, prefix, workflows=[approval_or_timeout]):
        handle = await client.start(approval_or_timeout, 0.5)
        assert await handle.result(timeout=20) == "timed out"
    history = await handle.history()
    assert [e.type for e in history if e.type.name.startswith("TIMER")] == [
        EventType.TIMER_STARTED,
        EventType.TIMER_FIRED,
    ]


async def test_signal_in_time_cancels_the_timeout_timer(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[approval_or_timeout]):
        handle = await client.start(approval_or_timeout, 30)
        await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.type is EventType.TIMER_STARTED for e in h),
        )
        await handle.signal("approve", "yes")
        assert await handle.result(timeout=20) == "yes"
    history = await handle.history()
    types = [e.type for e in history]
    assert EventType.TIMER_CANCELED in types and EventType.TIMER_FIRED not in types
    started = next(e for e in history if e.type is EventType.TIMER_STARTED)
    subject = client.names.timer_subject(client.tenant, handle.run_id, f"t-{started.id}")
    info = await client.nc.jetstream().stream_info(
        client.names.stream_timers, subjects_filter=subject
    )
    assert not info.state.subjects  # the schedule was purged, not left to fire


async def test_wait_condition_and_status(nats_url: str, prefix: str, client: Client) -> None:
    async with running_worker(nats_url, prefix, workflows=[counter]):
        handle = await client.start(counter, 5)
        await handle.signal("add", 2)
        async with asyncio.timeout(20):
            while await handle.status() != {"n": 2}:
                await asyncio.sleep(0.05)
        await handle.signal("add", 3)
        assert await handle.result(timeout=20) == 5
    assert await handle.status() == {"n": 5}


async def test_cancel_during_an_activity(
    nats_url: str, prefix: str, client: Client, tmp_path: Path
) -> None:
    STOPPED.clear()
    async with running_worker(
        nats_url, prefix, workflows=[cancellable], activities=[slow_beating, echo]
    ):
        handle = await client.start(cancellable)
        await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.type is EventType.ACTIVITY_HEARTBEAT for e in h),
        )
        await handle.cancel("customer changed their mind")
        with pytest.raises(WorkflowFailedError) as failed:
            await handle.result(timeout=20)
        async with asyncio.timeout(10):  # the attempt hears it on its next heartbeat
            while not STOPPED:
                await asyncio.sleep(0.05)
    assert failed.value.cause.type == "WorkflowCancelled"
    assert "customer changed their mind" in failed.value.cause.message
    assert STOPPED == ["main"]
    history = await handle.history()
    assert_well_formed(history)
    types = [e.type for e in history]
    assert types.index(EventType.WORKFLOW_CANCEL_REQUESTED) < types.index(
        EventType.ACTIVITY_CANCELED
    )
    cleanup = [e for e in history if e.type is EventType.ACTIVITY_SCHEDULED]
    assert [e.attrs["name"] for e in cleanup] == ["slow_beating", "echo"]
    assert types[-1] is EventType.WORKFLOW_CANCELED
    assert (await handle.describe()).status is RunStatus.CANCELED
    # One spelling: "cancelled". A history recorded with the old one still reads and replays.
    assert (types[-1].value, RunStatus.CANCELED.value) == ("WorkflowCancelled", "cancelled")
    assert RunStatus("canceled") is RunStatus.CANCELLED  # a run snapshot of before
    exported = history_to_json(history, workflow_id=handle.workflow_id, run_id=handle.run_id)
    old = exported.replace("ActivityCancelled", "ActivityCanceled").replace(
        "WorkflowCancelled", "WorkflowCanceled"
    )
    assert "WorkflowCanceled" in old and "ActivityCanceled" in old
    assert [e.type for e in history_from_json(old)] == types
    (tmp_path / "old.json").write_text(old)
    assert replay_file(tmp_path / "old.json", cancellable).ok


async def test_child_workflows_fan_out_and_fail_into_the_parent(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(
        nats_url, prefix, workflows=[parent, strict_parent, failing_child], activities=[echo]
    ):
        handle = await client.start(parent, [1, -1, 3])
        assert await handle.result(timeout=30) == [
            "10",
            "BadInput: negative input",
            "30",
        ]
        strict = await client.start(strict_parent)
        with pytest.raises(WorkflowFailedError) as failed:
            await strict.result(timeout=30)
    assert failed.value.cause.type == "ChildWorkflowError"
    history = await handle.history()
    assert_well_formed(history)
    scheduled = [e for e in history if e.type is EventType.CHILD_WORKFLOW_SCHEDULED]
    assert len(scheduled) == 3
    child = await client.get_handle(scheduled[0].attrs["workflow_id"], scheduled[0].attrs["run_id"])
    child_history = await child.history()
    assert child_history[0].attrs["parent"]["run_id"] == handle.run_id


async def test_continue_as_new_over_three_generations(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[generations], activities=[echo]):
        handle = await client.start(generations, 1, 3, id="renewing")
        first_run = handle.run_id
        assert await handle.result(timeout=30) == "done after 3 generations"
    runs = [first_run]
    for _ in range(2):
        h = await client.get_handle("renewing", runs[-1])
        last = (await h.history())[-1]
        assert last.type is EventType.WORKFLOW_CONTINUED_AS_NEW
        runs.append(last.attrs["new_run_id"])
    assert handle.run_id == runs[-1]  # the handle followed the chain
    newest = await client.get_handle("renewing")
    assert newest.run_id == runs[-1]
    final = await newest.history()
    assert final[0].attrs["continued_from"] == runs[1]
    assert len(final) < 12  # each generation keeps a short history


async def test_sleeping_run_is_released_from_memory(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[napper], release_after=0.2) as worker:
        handle = await client.start(napper, 0.5)
        assert len(await handle.result(timeout=20)) == 2
    assert worker.released == 2  # once per sleep: nothing held while it slept
    assert worker.replays == 3  # the first task, then once after each firing


async def test_timedelta_and_activity_errors_still_work(
    nats_url: str, prefix: str, client: Client
) -> None:
    @immortal.workflow(name="short_nap")
    async def short_nap(ctx: WorkflowContext) -> str:
        await ctx.sleep(timedelta(milliseconds=50))
        try:
            await ctx.activity("missing_activity", retry=ONCE)
        except ActivityError as exc:
            return exc.cause.type
        return "no error"

    async with running_worker(nats_url, prefix, workflows=[short_nap], activities=[echo]):
        handle = await client.start(short_nap)
        assert await handle.result(timeout=20) == "UnknownActivityType"
