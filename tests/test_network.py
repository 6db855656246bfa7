"""The worker network: backpressure by slots, and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

import immortal
from immortal import Client, EventType, WorkflowContext
from tests.helpers import assert_well_formed, running_worker
from tests.procs import start_worker
from tests.workflows import gated_flow

RUNNING = 0
MOST = 0


@immortal.activity
async def occupy(i: int) -> int:
    global RUNNING, MOST
    RUNNING += 1
    MOST = max(MOST, RUNNING)
    await asyncio.sleep(0.2)
    RUNNING -= 1
    return i


@immortal.workflow(name="occupied")
async def occupied(ctx: WorkflowContext, i: int) -> int:
    return await ctx.activity(occupy, i)


async def test_a_worker_with_four_slots_never_holds_more_than_four_activity_tasks(
    nats_url: str, prefix: str, client: Client
) -> None:
    global MOST
    MOST = 0
    async with running_worker(
        nats_url, prefix, workflows=[occupied], activities=[occupy], activity_slots=4
    ):
        handles = [await client.start(occupied, i) for i in range(16)]
        assert await asyncio.gather(*(h.result(timeout=30) for h in handles)) == list(range(16))
    assert MOST == 4  # busy enough to use every slot, and never more


@pytest.mark.parametrize("finish_in_grace", [True, False])
async def test_sigterm_with_three_activities_in_flight_loses_and_repeats_nothing(
    nats_url: str, prefix: str, client: Client, test_dir: Path, finish_in_grace: bool
) -> None:
    leaving = await start_worker(
        nats_url, test_dir, prefix=prefix, lease=60, worker_id="leaving", grace=1.0
    )
    tags = [f"t{i}" for i in range(3)]
    handles = [await client.start(gated_flow, tag) for tag in tags]
    async with asyncio.timeout(20):
        while len(list(test_dir.glob(f"started-*-{leaving.pid}"))) < 3:
            await asyncio.sleep(0.02)
    leaving.proc.send_signal(signal.SIGTERM)
    if finish_in_grace:
        for tag in tags:
            (test_dir / f"gate-{tag}").touch()
    await asyncio.wait_for(leaving.proc.wait(), 20)
    assert leaving.proc.returncode == 0
    for tag in tags:
        (test_dir / f"gate-{tag}").touch()
    staying = await start_worker(nats_url, test_dir, prefix=prefix, lease=60, worker_id="staying")
    try:
        results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    finally:
        await staying.stop()
    for tag, result in zip(tags, results, strict=True):
        assert result.startswith(f"{tag} done by")
        who = leaving.pid if finish_in_grace else staying.pid
        assert result == f"{tag} done by {who}!"
    for h in handles:
        history = await h.history()
        assert_well_formed(history)
        gated = next(e for e in history if e.type is EventType.ACTIVITY_COMPLETED)
        assert gated.attrs["worker"] == ("leaving" if finish_in_grace else "staying")
        assert not any(e.type is EventType.ACTIVITY_RESULT_IGNORED for e in history)


async def test_frozen_worker_loses_its_attempt_and_is_cancelled_when_it_thaws(
    nats_url: str, prefix: str, client: Client, test_dir: Path
) -> None:
    from tests.workflows import beating_flow

    # A frozen worker also holds what its open pull request received after its last
    # registration; that waits out the lease (5 s here), since it was never listed.
    frozen = await start_worker(nats_url, test_dir, prefix=prefix, lease=5, worker_id="frozen")
    handle = await client.start(beating_flow, "ice")
    async with asyncio.timeout(20):
        while not list(test_dir.glob(f"started-ice-{frozen.pid}")):
            await asyncio.sleep(0.02)
    frozen.proc.send_signal(signal.SIGSTOP)  # frozen, not dead: past its heartbeat timeout
    await asyncio.sleep(2.5)
    other = await start_worker(nats_url, test_dir, prefix=prefix, lease=5, worker_id="other")
    (test_dir / f"gate-ice-{other.pid}").touch()  # only the other worker's attempts can finish
    try:
        result = await handle.result(timeout=30)
        frozen.proc.send_signal(signal.SIGCONT)
        async with asyncio.timeout(15):
            while not list(test_dir.glob(f"cancelled-ice-{frozen.pid}")):
                await asyncio.sleep(0.05)
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        await frozen.stop()
        await other.stop()
    assert result == f"ice done by {other.pid}"
    history = await handle.history()
    assert_well_formed(history)
    completed = [e for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    assert len(completed) == 1 and completed[0].attrs["worker"] == "other"
    timed_out = [e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED]
    assert timed_out[0].attrs["failure"]["type"] == "HeartbeatTimeout"
    assert timed_out[0].attrs["attempt"] == 1
