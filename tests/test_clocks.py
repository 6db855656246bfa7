"""Whose clock stamps what: the hub's. A worker (or a server) whose clock is off may shift
nothing in history backwards, and make no sleep or timeout end early."""

from __future__ import annotations

from pathlib import Path

import pytest

from immortal import Client, EventType, HistoryEvent
from tests.helpers import assert_well_formed, running_worker
from tests.procs import skewed_clock, start_hub, start_worker
from tests.workflows import clockwork


def _one(history: list[HistoryEvent], kind: EventType, **attrs: object) -> HistoryEvent:
    [event] = [
        e for e in history if e.type is kind and all(e.attrs.get(k) == v for k, v in attrs.items())
    ]
    return event


def _assert_on_the_hubs_clock(history: list[HistoryEvent]) -> None:
    assert_well_formed(history)
    stamps = [e.ts for e in history]
    assert stamps == sorted(stamps), "history time went backwards"
    by_id = {e.id: e for e in history}
    for e in history:
        if e.caused_by is not None:
            assert e.ts >= by_id[e.caused_by].ts, f"{e.type} stamped before its cause"
    # The sleep began after the first activity, which began after it was scheduled (both
    # stamped by the hub): 2 s of real time at least, whoever reckoned the due time.
    first = _one(history, EventType.ACTIVITY_SCHEDULED, name="double")
    fired = _one(history, EventType.TIMER_FIRED)
    assert fired.ts - first.ts >= 2000, "the sleep ended early"
    # The start-to-close of 1 s ran from the attempt's start, after it was scheduled.
    overrun = _one(history, EventType.ACTIVITY_SCHEDULED, name="overruns")
    failed = _one(history, EventType.ACTIVITY_FAILED)
    assert failed.attrs["failure"]["type"] == "StartToCloseTimeout"
    assert failed.ts - overrun.ts >= 1000, "the start-to-close timeout came early"


@pytest.mark.parametrize("skew_ms", [-600, 600, -3000, 3000])
async def test_a_worker_whose_clock_is_off_shifts_no_time_in_history(
    nats_url: str, prefix: str, client: Client, test_dir: Path, skew_ms: int
) -> None:
    worker = await start_worker(nats_url, test_dir, prefix=prefix, env=skewed_clock(skew_ms))
    try:
        handle = await client.start(clockwork, 3)
        assert await handle.result(timeout=30) == "StartToCloseTimeout"
    finally:
        await worker.stop()
    _assert_on_the_hubs_clock(await handle.history())


async def test_a_hub_behind_the_servers_clock_still_ends_sleeps_on_time(
    nats_url: str, prefix: str, test_dir: Path
) -> None:
    # The server fires a durable timer by its own clock, 3 s ahead of the hub's (on which
    # the hub reckoned the due time): the firing waits until it is due on the hub's clock.
    hub = await start_hub(nats_url, prefix, env=skewed_clock(-3000))
    try:
        async with (
            Client(nats_url, prefix=prefix) as client,
            running_worker(nats_url, prefix, workflows=[clockwork]),
        ):
            handle = await client.start(clockwork, 3)
            assert await handle.result(timeout=30) == "StartToCloseTimeout"
            history = await handle.history()
    finally:
        await hub.stop()
    _assert_on_the_hubs_clock(history)
    started = _one(history, EventType.TIMER_STARTED)
    assert _one(history, EventType.TIMER_FIRED).ts - started.ts >= 2000
