"""Durable sleeps survive what kills processes: no worker at all, a hub SIGKILL, and a
nats-server restart, each timer firing exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from immortal import Client, EventType
from immortal._wire import TimerFired, now_ms
from immortal.testing import NatsServer
from immortal_hub import Hub
from immortal_hub._emissions import Emission
from tests.helpers import assert_well_formed, running_worker, wait_for_history
from tests.procs import start_hub, start_worker
from tests.workflows import sleeper


async def test_sleep_with_every_worker_stopped_then_a_new_worker_resumes(
    nats_url: str, prefix: str, client: Client, tmp_path: Path
) -> None:
    async with running_worker(nats_url, prefix, workflows=[sleeper], release_after=1) as first:
        handle = await client.start(sleeper, 5.0, 21)
        await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.type is EventType.TIMER_STARTED for e in h),
        )
        async with asyncio.timeout(5):
            while first.released < 1:
                await asyncio.sleep(0.02)
        assert not first._cache  # the sleeping run holds no memory on the worker
    # No worker anywhere now. The timer fires on the server; the hub records it.
    history = await wait_for_history(
        client,
        handle.workflow_id,
        handle.run_id,
        lambda h: any(e.type is EventType.TIMER_FIRED for e in h),
        timeout=15,
    )
    assert history[-1].type is EventType.WORKFLOW_TASK_SCHEDULED
    worker = await start_worker(nats_url, tmp_path, prefix=prefix)  # a fresh process
    try:
        assert await handle.result(timeout=20) == 42
    finally:
        await worker.stop()
    history = await handle.history()
    assert_well_formed(history)
    assert sum(e.type is EventType.TIMER_FIRED for e in history) == 1


async def test_hub_and_server_restarted_while_timers_pending(
    nats_server: NatsServer, nats_url: str, prefix: str
) -> None:
    hub = await start_hub(nats_url, prefix)
    try:
        async with (
            running_worker(nats_url, prefix, workflows=[sleeper], release_after=0),
            Client(nats_url, prefix=prefix) as client,
        ):
            # Short timers come due while the hub is dead and the server restarts; long
            # ones after everything is back.
            handles = [await client.start(sleeper, 1.0 if i % 2 else 6.0, i) for i in range(8)]
            for h in handles:
                await wait_for_history(
                    client,
                    h.workflow_id,
                    h.run_id,
                    lambda h: any(e.type is EventType.TIMER_STARTED for e in h),
                )
            await hub.kill()
            await nats_server.restart()
            await asyncio.sleep(1.0)
            hub = await start_hub(nats_url, prefix)
            results = [await h.result(timeout=30) for h in handles]
            histories = [await h.history() for h in handles]
    finally:
        await hub.stop()
    assert results == [2 * i for i in range(8)]
    for history in histories:
        assert_well_formed(history)
        started = [e for e in history if e.type is EventType.TIMER_STARTED]
        fired = [e for e in history if e.type is EventType.TIMER_FIRED]
        assert len(started) == 1 and len(fired) == 1  # exactly once
        assert fired[0].ts >= started[0].attrs["due"]  # and never early


async def test_a_rearmed_timer_replaces_its_local_firing(hub: Hub, client: Client) -> None:
    """A heartbeat pushes its timeout out by re-arming the same timer: the hub keeps one
    local firing per timer, the newest, and the server keeps the newest schedule."""
    body = TimerFired(workflow_id="w", run_id="r", timer="hb-4-1", kind="heartbeat_timeout")
    first, second = now_ms() + 60_000, now_ms() + 90_000
    for due in (first, second):
        emission = Emission("timer", "default", f"r:hb-4-1:{due}", body, due)
        await hub._publish_emission("default", emission)
    subject = client.names.timer_subject("default", "r", "hb-4-1")
    assert [msg_id for msg_id, _ in hub._timers.armed.values()] == [f"r:hb-4-1:{second}"]
    stored = await client.nc.jetstream().get_last_msg(client.names.stream_timers, subject)
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == f"r:hb-4-1:{second}"
