"""A workflow's log line is stored once, however often its code runs live: a run-ahead the
hub refuses (a hub slow to apply the result) runs the same code again from history."""

from __future__ import annotations

import asyncio
import signal

import pytest

import immortal
import immortal_hub._transitions
from immortal import Client, EventType, WorkflowContext
from immortal_hub import Hub
from tests.helpers import running_worker, wait_for_history
from tests.procs import start_hub
from tests.workflows import double

GATE = asyncio.Event()


@immortal.activity
async def waits_for_gate(x: int) -> int:
    await GATE.wait()
    return 2 * x


@immortal.workflow
async def logs_after_results(ctx: WorkflowContext, x: int) -> int:
    ctx.log.info("starting with %s", x)
    a = await ctx.activity(waits_for_gate, x)
    ctx.log.info("got %s", a)  # logged by the worker running ahead with the result
    b = await ctx.activity(double, a)
    ctx.log.info("then %s", b)
    return b


async def _lines(handle: immortal.WorkflowHandle[int]) -> list[str]:
    return [line.message async for line in handle.logs()]


async def test_lines_logged_running_ahead_are_stored_once_when_the_hub_refuses(
    nats_url: str, prefix: str, client: Client, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    GATE.set()
    monkeypatch.setattr(immortal_hub._transitions, "_AHEAD_LAG_MS", -1)  # refuse them all
    kinds = {"workflows": [logs_after_results], "activities": [waits_for_gate, double]}
    async with running_worker(nats_url, prefix, **kinds) as worker:
        handle = await client.start(logs_after_results, 3)
        assert await handle.result(timeout=20) == 12
        async with asyncio.timeout(10):
            while len(await _lines(handle)) < 3:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a repeated line would have arrived by now
    assert worker.replays == 3  # each run-ahead was refused and its task replayed
    assert await _lines(handle) == ["starting with 3", "got 6", "then 12"]


async def test_lines_are_stored_once_when_a_frozen_hub_applies_the_result_late(
    nats_url: str, prefix: str
) -> None:
    GATE.clear()
    hub = await start_hub(nats_url, prefix)
    try:
        kinds = {"workflows": [logs_after_results], "activities": [waits_for_gate, double]}
        async with (
            Client(nats_url, prefix=prefix) as client,
            running_worker(nats_url, prefix, **kinds),
        ):
            handle = await client.start(logs_after_results, 3)
            await wait_for_history(
                client,
                handle.workflow_id,
                handle.run_id,
                lambda h: any(e.type is EventType.ACTIVITY_SCHEDULED for e in h),
            )
            hub.proc.send_signal(signal.SIGSTOP)
            GATE.set()  # the worker runs ahead, logs "got 6", and finds no hub answering
            await asyncio.sleep(6.5)  # past the request's 5 s: the result goes durable
            hub.proc.send_signal(signal.SIGCONT)
            assert await handle.result(timeout=30) == 12
            history = await handle.history()
            await asyncio.sleep(0.5)
            lines = await _lines(handle)
    finally:
        hub.proc.send_signal(signal.SIGCONT)
        await hub.stop()
    completed = [e for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    assert len(completed) == 2
    assert lines == ["starting with 3", "got 6", "then 12"]
