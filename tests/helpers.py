"""Assertions about histories that several tests share."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from immortal import Client, EventType, HistoryEvent
from immortal._wire import CLOSING_EVENTS
from immortal_hub import Hub
from immortal_worker import Worker


def assert_well_formed(history: list[HistoryEvent]) -> None:
    """Contiguous ids from 1, causes point backwards, each activity closes at most once."""
    assert [e.id for e in history] == list(range(1, len(history) + 1)), "ids not contiguous"
    for e in history:
        assert e.caused_by is None or 0 < e.caused_by < e.id, f"bad cause on {e}"
    scheduled = [e for e in history if e.type is EventType.ACTIVITY_SCHEDULED]
    assert len({e.attrs["seq"] for e in scheduled}) == len(scheduled), "activity scheduled twice"
    closed = Counter(
        e.caused_by
        for e in history
        if e.type in (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED)
    )
    assert all(n == 1 for n in closed.values()), f"activity closed twice: {closed}"
    outcomes = [e for e in history if e.type in CLOSING_EVENTS]
    assert len(outcomes) <= 1, "run closed twice"


@asynccontextmanager
async def running_hub(url: str, prefix: str, **kwargs: Any) -> AsyncIterator[Hub]:
    hub = Hub(url, prefix=prefix, **kwargs)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


@asynccontextmanager
async def running_worker(url: str, prefix: str, **kwargs: Any) -> AsyncIterator[Worker]:
    from tests.workflows import activities, workflows

    kwargs.setdefault("workflows", workflows)
    kwargs.setdefault("activities", activities)
    worker = Worker(url, prefix=prefix, **kwargs)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace=2.0)


async def wait_for_history(
    client: Client,
    workflow_id: str,
    run_id: str,
    predicate: Callable[[list[HistoryEvent]], bool],
    timeout: float = 20.0,
) -> list[HistoryEvent]:
    handle = await client.get_handle(workflow_id, run_id)
    async with asyncio.timeout(timeout):
        while True:
            history = await handle.history()
            if predicate(history):
                return history
            await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Any], tries: int = 200) -> Any:
    """What ``await check()`` gives once it is truthy, polling every 50 ms; its last
    (falsy) answer after ``tries``."""
    for _ in range(tries):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    return await check()
