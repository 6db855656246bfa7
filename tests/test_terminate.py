"""Closing runs no worker can run: cancel before the code ran, terminate, bounded retries."""

from __future__ import annotations

import asyncio
import sys

import pytest
from nats.js.api import StreamInfo

import immortal
from immortal import Client, EventType, RunStatus, WorkflowContext, WorkflowFailedError
from immortal._errors import WorkflowClosedError
from immortal_hub import ResourceSettings, ensure_resources
from tests.helpers import assert_well_formed, running_hub, running_worker, wait_for_history
from tests.procs import ROOT


@immortal.activity
async def slow_step(x: int) -> int:
    await asyncio.sleep(30)
    return x


@immortal.workflow
async def sleeps_then_works(ctx: WorkflowContext, x: int) -> int:
    await ctx.sleep(600)
    return await ctx.activity(slow_step, x)


@immortal.workflow
async def works_then_sleeps(ctx: WorkflowContext, x: int) -> int:
    child = ctx.child(sleeps_then_works, x, id=f"{ctx.info.workflow_id}-child")
    done, more = await asyncio.gather(ctx.activity(slow_step, x), child)
    return done + more


def _failed(history: list[immortal.HistoryEvent]) -> bool:
    return any(e.type is EventType.WORKFLOW_TASK_FAILED for e in history)


async def _tasks_of(client: Client) -> int:
    js = client.nc.jetstream()
    info: StreamInfo = await js.stream_info(client.names.stream_tasks, subjects_filter=">")
    return sum((info.state.subjects or {}).values())


async def test_a_run_of_an_unknown_type_is_closed_by_cancel_and_its_task_drains(
    nats_url: str, prefix: str
) -> None:
    # A duplicate window of 1 s: a task re-published on every repeated failure (the old
    # behaviour) would pile up copies here within seconds instead of every 2 minutes.
    settings = ResourceSettings(duplicate_window=1.0)
    async with Client(nats_url, prefix=prefix) as client:
        await ensure_resources(client.nc.jetstream(), client.names, settings)
    async with (
        Client(nats_url, prefix=prefix) as client,
        running_worker(nats_url, prefix, workflow_task_retry_delay=0.1),
    ):
        async with running_hub(nats_url, prefix, settings=settings):
            handle = await client.start("no_such_type", 1, id="nobody-runs-me")
            await wait_for_history(client, handle.workflow_id, handle.run_id, _failed)
        # A hub restarted holds no record of the task it pushed: nothing else stops it from
        # re-publishing the task at each repeated failure.
        async with running_hub(nats_url, prefix, settings=settings):
            await asyncio.sleep(4)  # several failed deliveries, each backing off
            await _closed_by_cancel(client, handle)


async def _closed_by_cancel(client: Client, handle: immortal.WorkflowHandle[object]) -> None:
    """Cancel closes it at once; the queued copy of its task drains."""
    assert await _tasks_of(client) <= 1, "the failing task was copied"
    assert (await handle.describe()).status is RunStatus.RUNNING
    await handle.cancel("typo in the type")
    with pytest.raises(WorkflowFailedError) as err:
        await handle.result(timeout=10)
    assert err.value.cause.type == "WorkflowCancelled"
    assert "typo in the type" in err.value.cause.message
    history = await handle.history()
    assert_well_formed(history)
    closing = history[-1]
    assert closing.type is EventType.WORKFLOW_CANCELED
    assert closing.attrs["before_code"] is True
    assert history[-2].type is EventType.WORKFLOW_CANCEL_REQUESTED
    # The task copy still queued is dropped at its next delivery, not retried forever.
    async with asyncio.timeout(30):
        while await _tasks_of(client):
            await asyncio.sleep(0.2)
    with pytest.raises(WorkflowClosedError, match="already cancelled"):
        await handle.cancel()


async def test_terminate_closes_a_sleeping_run_with_an_activity_in_flight_at_once(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(
        nats_url, prefix, workflows=[works_then_sleeps, sleeps_then_works], activities=[slow_step]
    ):
        handle = await client.start(works_then_sleeps, 7, id="to-terminate")

        def started(history: list[immortal.HistoryEvent]) -> bool:
            kinds = {e.type for e in history}
            return {EventType.ACTIVITY_SCHEDULED, EventType.CHILD_WORKFLOW_SCHEDULED} <= kinds

        history = await wait_for_history(client, handle.workflow_id, handle.run_id, started)
        [scheduled] = [e for e in history if e.type is EventType.CHILD_WORKFLOW_SCHEDULED]
        child = await client.get_handle("to-terminate-child", scheduled.attrs["run_id"])
        await wait_for_history(
            client,
            child.workflow_id,
            child.run_id,
            lambda h: any(e.type is EventType.TIMER_STARTED for e in h),
        )
        await handle.terminate("operator: stuck order")
        with pytest.raises(WorkflowFailedError) as err:
            await handle.result(timeout=10)
        assert err.value.cause.type == "WorkflowTerminated"
        assert "operator: stuck order" in err.value.cause.message
        history = await handle.history()
        assert_well_formed(history)
        assert history[-1].type is EventType.WORKFLOW_TERMINATED
        assert history[-1].attrs["reason"] == "operator: stuck order"
        assert not any(e.type is EventType.ACTIVITY_COMPLETED for e in history)
        assert (await handle.describe()).status is RunStatus.TERMINATED
        # Its open child is asked to cancel, as at any close; the child's code cleans up.
        with pytest.raises(WorkflowFailedError) as child_err:
            await child.result(timeout=20)
        assert child_err.value.cause.type == "WorkflowCancelled"
        with pytest.raises(WorkflowClosedError, match="already terminated"):
            await handle.terminate()
        with pytest.raises(WorkflowClosedError, match="already terminated"):
            await handle.signal("anything")


async def test_immortal_workflow_terminate_closes_a_run_from_the_command_line(
    nats_url: str, prefix: str, client: Client
) -> None:
    handle = await client.start("no_worker_serves_this", id="stuck-order")  # no worker at all
    await wait_for_history(client, handle.workflow_id, handle.run_id, lambda h: bool(h))
    args = ["workflow", "terminate", "stuck-order", "--reason", "cleanup", "-s", nats_url]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", *args, "--prefix", prefix,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"terminated stuck-order (run {handle.run_id})" in out.decode()
    with pytest.raises(WorkflowFailedError) as failed:
        await handle.result(timeout=10)
    assert failed.value.cause.type == "WorkflowTerminated"
    assert (await handle.history())[-1].attrs["reason"] == "cleanup"
