"""Immortal with auth on, end to end: a hub, a worker and clients with their own tokens on a
server whose every connection goes through the auth service. Each role does its job under
the broker's permissions; what it may not do is refused with a typed error; who started,
signalled and cancelled a run is in its history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from immortal import Client, EventType, format_timeline
from immortal.security import AuthError, PermissionDeniedError
from immortal_hub import Hub
from immortal_worker import Worker
from tests.security_fixtures import SecureStack, hub_and_worker, secure_stack
from tests.workflows import add, double, square, three_step, waits_for_go


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def running(stack: SecureStack) -> AsyncIterator[SecureStack]:
    """A hub and a worker of tenant acme (queue default), each with its own token."""
    hub = Hub(stack.url, security=stack.hub_security())
    await hub.start()
    worker = Worker(
        stack.url,
        workflows=[three_step, waits_for_go],
        activities=[double, square, add],
        security=stack.security("svc-worker", ["acme:worker"], queues=["default"]),
    )
    await worker.start()
    try:
        yield stack
    finally:
        await worker.stop()
        await hub.stop()


async def test_a_writer_runs_a_workflow_and_history_says_who(running: SecureStack) -> None:
    writer = running.security("ann", ["acme:writer"], jti="token-ann-1")
    async with Client(running.url, security=writer) as client:
        assert client.tenant == "acme"  # from the token, not an argument
        handle = await client.start(three_step, 3, id="order-1")
        assert await asyncio.wait_for(handle.result(), 30) == 15
        events = await handle.history()
        started = events[0]
        assert started.type is EventType.WORKFLOW_STARTED
        by = started.attrs["by"]
        assert by["subject"] == "ann" and by["tenant"] == "acme" and by["roles"] == ["writer"]
        assert by["token_id"] == "token-ann-1" and by["pid"] == writer.sender()
        assert writer.token is not None and writer.token() not in str(events)
        assert "by ann (writer)" in format_timeline(events).splitlines()[0]
        assert (await handle.describe()).status == "completed"
        workers = await client.workers()
        assert len(workers) == 1 and workers[0].queues == ["default"]


async def test_signals_and_cancels_record_their_sender(running: SecureStack) -> None:
    async with Client(running.url, security=running.security("ann", ["acme:writer"])) as ann:
        handle = await ann.start(waits_for_go, 1, id="wait-1")
        async with Client(running.url, security=running.security("bob", ["acme:admin"])) as bob:
            other = await bob.get_handle("wait-1")
            for _ in range(100):
                if any(e.type is EventType.ACTIVITY_COMPLETED for e in await other.history()):
                    break
                await asyncio.sleep(0.05)
            await other.signal("go", None)
            assert await asyncio.wait_for(handle.result(), 30) == 4
        second = await ann.start(waits_for_go, 1, id="wait-2")
        await second.cancel("no longer needed")
        with pytest.raises(Exception, match="cancel"):
            await asyncio.wait_for(second.result(), 30)
        signalled = [e for e in await handle.history() if e.type is EventType.WORKFLOW_SIGNALED]
        assert signalled[0].attrs["by"]["subject"] == "bob"
        assert signalled[0].attrs["by"]["roles"] == ["admin"]
        cancelled = [
            e for e in await second.history() if e.type is EventType.WORKFLOW_CANCEL_REQUESTED
        ]
        assert cancelled[0].attrs["by"]["subject"] == "ann"


async def test_a_reader_reads_but_cannot_start_signal_or_cancel(running: SecureStack) -> None:
    async with Client(running.url, security=running.security("ann", ["acme:writer"])) as ann:
        await ann.start(waits_for_go, 2, id="read-me")
    async with Client(running.url, security=running.security("rita", ["acme:reader"])) as rita:
        seen = await rita.get_handle("read-me")
        for _ in range(100):
            if len(await seen.history()) >= 5:
                break
            await asyncio.sleep(0.05)
        assert (await seen.history())[0].attrs["by"]["subject"] == "ann"
        assert (await seen.describe()).workflow_type == "waits_for_go"
        with pytest.raises(PermissionDeniedError, match="start"):
            await rita.start(three_step, 1)
        with pytest.raises(PermissionDeniedError, match="signal"):
            await seen.signal("go")
        with pytest.raises(PermissionDeniedError, match="cancel"):
            await seen.cancel()
    # The run is untouched: a writer still finishes it.
    async with Client(running.url, security=running.security("ann", ["acme:writer"])) as ann:
        handle = await ann.get_handle("read-me")
        await handle.signal("go")
        assert await asyncio.wait_for(handle.result(), 30) == 8


async def test_another_tenant_sees_nothing_and_its_own_tenant_only(running: SecureStack) -> None:
    async with Client(running.url, security=running.security("ann", ["acme:writer"])) as ann:
        await (await ann.start(three_step, 2, id="secret")).result()
    async with Client(running.url, security=running.security("gus", ["globex:admin"])) as gus:
        assert gus.tenant == "globex"
        with pytest.raises(Exception) as info:
            await gus.get_handle("secret")
        assert "secret" in str(info.value)  # not found: globex has no such workflow
        assert await gus.workers() == []
    with pytest.raises(AuthError, match="tenant 'acme', not 'globex'"):
        Client(running.url, tenant="globex", security=running.security("ann", ["acme:writer"]))


async def test_a_worker_token_names_its_queues(running: SecureStack) -> None:
    with pytest.raises(AuthError, match="not payments"):
        Worker(
            running.url,
            queues=["payments"],
            activities=[double],
            security=running.security("svc", ["acme:worker"], queues=["orders"]),
        )


async def test_schedules_and_dead_letters_work_within_the_tenant(running: SecureStack) -> None:
    async with Client(running.url, security=running.security("ann", ["acme:writer"])) as ann:
        await ann.schedules.create("tick", three_step, 1, every=1)
        assert [s.schedule_id for s in await ann.schedules.list()] == ["tick"]
        for _ in range(100):  # it fires: runs start in acme
            if await _scheduled_runs(ann):
                break
            await asyncio.sleep(0.1)
        assert await _scheduled_runs(ann)
        await ann.schedules.pause("tick")  # asked of a hub, which alone may purge it
        await asyncio.sleep(1.5)  # a firing already under way may still land
        seen = await _scheduled_runs(ann)
        await asyncio.sleep(2.5)
        assert await _scheduled_runs(ann) == seen  # paused: nothing more starts
        await ann.schedules.delete("tick")
        assert await ann.schedules.list() == []
        assert await ann.dead_letters.list() == []  # readable (and empty) within the tenant
        # What the broker cannot scope is refused at once, saying why (not a timeout).
        with pytest.raises(PermissionDeniedError, match="consumer info"):
            await ann.queues()
        with pytest.raises(PermissionDeniedError, match="message delete"):
            await ann.dead_letters.drop(1)


async def _scheduled_runs(client: Client) -> int:
    """The closed runs the schedule made, read from the runs index (through the relay)."""
    page = await client.list_workflows(status="closed", limit=1000)
    return sum("@" in run.workflow_id for run in page.runs)


async def test_with_no_hub_running_a_start_returns_at_once_and_says_so(
    stack: SecureStack, caplog: pytest.LogCaptureFixture
) -> None:
    """With auth on a client reads the live workers through a hub: with none running,
    the start still queues durably and returns, without waiting for that advice, and the
    log says why nothing runs yet; a hub started later runs it."""
    security = stack.security("ann", ["acme:writer"])
    async with Client(stack.url, security=security) as client:
        t0 = asyncio.get_running_loop().time()
        with caplog.at_level("WARNING", logger="immortal._client"):
            handle = await client.start(three_step, 3, id="before-any-hub")
        assert asyncio.get_running_loop().time() - t0 < 3.0  # it took ~20 s before
        assert any("no hub answered" in r.getMessage() for r in caplog.records)
        async with hub_and_worker(stack, workflows=[three_step], activities=[double, square, add]):
            assert await asyncio.wait_for(handle.result(), 30) == 15
