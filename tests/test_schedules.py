"""Schedules: a workflow started every interval by a NATS scheduled message."""

from __future__ import annotations

import asyncio

import pytest

import immortal
from immortal import Client, NotSetUpError, WorkflowContext
from immortal_hub import Hub
from tests.helpers import running_worker


@immortal.workflow
async def tick(ctx: WorkflowContext, label: str) -> str:
    return f"{label} at {ctx.info.workflow_id}"


async def _runs(client: Client, schedule_id: str) -> list[str]:
    """The workflow ids of the schedule's closed runs, from the runs index."""
    page = await client.list_workflows(status="completed", limit=1000)
    return sorted(r.workflow_id for r in page.runs if r.workflow_id.startswith(f"{schedule_id}@"))


async def test_schedule_every_two_seconds_then_paused(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[tick]):
        info = await client.schedules.create("heartbeat", tick, "tick", every=2)
        assert info.spec == "@every 2s" and not info.paused
        async with asyncio.timeout(15):
            while len(await _runs(client, "heartbeat")) < 3:
                await asyncio.sleep(0.1)
        await client.schedules.pause("heartbeat")
        paused_with = len(await _runs(client, "heartbeat"))
        assert paused_with == 3
        await asyncio.sleep(5)  # two and a half intervals: nothing starts
        assert len(await _runs(client, "heartbeat")) == paused_with
        [listed] = await client.schedules.list()
        assert listed.schedule_id == "heartbeat" and listed.paused
        first_id = (await _runs(client, "heartbeat"))[0]
        first = await client.get_handle(first_id)
        assert (await first.result(timeout=10)).startswith("tick at heartbeat@")
        await client.schedules.delete("heartbeat")
    assert await client.schedules.list() == []


async def test_schedule_arguments_are_checked(client: Client) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await client.schedules.create("bad", tick, "x")
    with pytest.raises(ValueError, match="5 or 6 fields"):
        await client.schedules.create("bad", tick, "x", cron="* *")
    with pytest.raises(ValueError, match="whole number"):
        await client.schedules.create("bad", tick, "x", every=0.5)


async def test_a_change_with_no_hub_running_says_so(nats_url: str, prefix: str) -> None:
    """A hub makes every change (auth on or off): with none running, the change fails at
    once, saying so, and nothing is stored."""
    set_up = Hub(nats_url, prefix=prefix)
    await set_up.start()
    await set_up.stop()  # the streams and buckets exist, no hub serves
    async with Client(nats_url, prefix=prefix) as client:
        with pytest.raises(NotSetUpError, match="no hub answered the schedule change on"):
            await client.schedules.create("orphan", tick, "x", every=60)
        assert await client.schedules.list() == []
