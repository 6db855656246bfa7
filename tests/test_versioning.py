"""``ctx.patched``: new code runs beside histories recorded by old code."""

from __future__ import annotations

import immortal
from immortal import Client, EventType, WorkflowContext
from tests.helpers import assert_well_formed, running_worker, wait_for_history


@immortal.activity
async def label(value: str) -> str:
    return value


@immortal.workflow(name="versioned")
async def v1(ctx: WorkflowContext) -> str:
    first = await ctx.activity(label, "old step")
    await ctx.wait_signal("go")
    return first


@immortal.workflow(name="versioned")
async def v2(ctx: WorkflowContext) -> str:
    if ctx.patched("new-step"):
        first = await ctx.activity(label, "new step")
    else:
        first = await ctx.activity(label, "old step")
    await ctx.wait_signal("go")
    return first


@immortal.workflow(name="versioned")
async def v2_unpatched(ctx: WorkflowContext) -> str:
    first = await ctx.activity(label, "new step")
    await ctx.activity(label, "another step")  # a change without a patch
    await ctx.wait_signal("go")
    return first


async def _old_run_waiting(client: Client, nats_url: str, prefix: str) -> immortal.WorkflowHandle:  # type: ignore[type-arg]
    async with running_worker(nats_url, prefix, workflows=[v1], activities=[label]):
        handle = await client.start("versioned")
        await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: sum(e.type is EventType.WORKFLOW_TASK_COMPLETED for e in h) >= 2,
        )
    return handle


async def test_patched_code_replays_an_old_history(
    nats_url: str, prefix: str, client: Client
) -> None:
    old = await _old_run_waiting(client, nats_url, prefix)
    async with running_worker(nats_url, prefix, workflows=[v2], activities=[label]) as worker:
        await old.signal("go")  # the new worker replays the old history to deliver it
        assert await old.result(timeout=20) == "old step"
        assert worker.replays >= 1
        new = await client.start("versioned")
        await wait_for_history(
            client,
            new.workflow_id,
            new.run_id,
            lambda h: any(e.type is EventType.ACTIVITY_COMPLETED for e in h),
        )
        await new.signal("go")
        assert await new.result(timeout=20) == "new step"
    old_history = await old.history()
    assert_well_formed(old_history)
    assert not any(e.type is EventType.WORKFLOW_TASK_FAILED for e in old_history)
    assert not any(e.type is EventType.MARKER_RECORDED for e in old_history)
    markers = [e for e in await new.history() if e.type is EventType.MARKER_RECORDED]
    assert [e.attrs["patch"] for e in markers] == ["new-step"]


async def test_unpatched_change_is_reported_as_nondeterminism(
    nats_url: str, prefix: str, client: Client
) -> None:
    old = await _old_run_waiting(client, nats_url, prefix)
    async with running_worker(
        nats_url, prefix, workflows=[v2_unpatched], activities=[label], workflow_task_retry_delay=60
    ):
        await old.signal("go")
        history = await wait_for_history(
            client,
            old.workflow_id,
            old.run_id,
            lambda h: any(e.type is EventType.WORKFLOW_TASK_FAILED for e in h),
        )
    failure = next(e for e in history if e.type is EventType.WORKFLOW_TASK_FAILED)
    assert failure.attrs["failure"]["type"] == "NonDeterminismError"
    assert "label" in failure.attrs["failure"]["message"]
    assert (await old.describe()).status is immortal.RunStatus.RUNNING  # waiting, uncorrupted
