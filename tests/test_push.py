"""Workflow tasks pushed over core NATS: no durable copy, yet nothing is lost when the
worker that took one, or the hub that pushed it, or both, die (hub/immortal_hub/_push.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

import immortal_hub._push
from immortal import Client, EventType, HistoryEvent, WorkflowHandle
from immortal._codec import encode_value
from immortal._inputs import StaleInput, send_input
from immortal._wire import CompleteWorkflow, Transition, WorkflowTaskResult, decode, encode
from immortal.testing import NatsServer
from immortal_hub import Hub
from tests.helpers import assert_well_formed, running_hub, running_worker
from tests.procs import start_hub, start_worker
from tests.workflows import stalls


async def _stalled(test_dir: Path, pid: int) -> None:
    async with asyncio.timeout(20):
        while not (test_dir / f"stalled-{pid}").exists():
            await asyncio.sleep(0.02)


async def _tasks_published(client: Client) -> int:
    info = await client.nc.jetstream().stream_info(client.names.stream_tasks)
    return info.state.last_seq


def _task_workers(history: list[HistoryEvent]) -> list[str]:
    return [e.attrs["worker"] for e in history if e.type is EventType.WORKFLOW_TASK_COMPLETED]


def _assert_ran_once(history: list[HistoryEvent]) -> None:
    assert_well_formed(history)
    assert sum(e.type is EventType.ACTIVITY_COMPLETED for e in history) == 1
    assert sum(e.type is EventType.WORKFLOW_COMPLETED for e in history) == 1
    assert not any(e.type is EventType.ACTIVITY_RESULT_IGNORED for e in history)


async def test_workflow_tasks_are_pushed_without_a_durable_copy(
    nats_url: str, prefix: str, client: Client, hub: Hub, test_dir: Path
) -> None:
    async with running_worker(nats_url, prefix, workflows=[stalls]) as worker:
        handle = await client.start(stalls, 3)
        assert await handle.result(timeout=20) == 7
    assert hub._pushes.pushed == 2 and worker._pushes.taken == 2
    assert await _tasks_published(client) == 1  # the activity task; no workflow task
    _assert_ran_once(await handle.history())


async def test_a_worker_killed_holding_a_pushed_task(
    nats_url: str, prefix: str, client: Client, hub: Hub, test_dir: Path
) -> None:
    victim = await start_worker(nats_url, test_dir, prefix=prefix, worker_id="victim")
    try:
        (test_dir / f"stall-{victim.pid}").write_text("60")
        handle = await client.start(stalls, 3)
        await _stalled(test_dir, victim.pid)  # it took the pushed task and holds it
        assert await _tasks_published(client) == 1  # the activity's; the task has no copy
        await victim.kill()
    finally:
        await victim.kill()
    # The hub publishes the task durably when the victim's liveness key expires; without
    # that, it would wait the 30 s a taken task may take (HOLD_S) and miss this timeout.
    async with running_worker(nats_url, prefix, worker_id="heir"):
        assert await handle.result(timeout=15) == 7
    history = await handle.history()
    _assert_ran_once(history)
    assert _task_workers(history) == ["victim", "victim", "heir"]
    assert hub._pushes.handed_off == 1
    # Had the victim lived to report the task it took, its result would be stale: the task
    # it names is closed. Such a result is fenced and changes nothing; its sender is told
    # (so that it drops the task instead of handing it back).
    wft = [e.id for e in history if e.type is EventType.WORKFLOW_TASK_SCHEDULED][-1]
    late = WorkflowTaskResult(
        workflow_id=handle.workflow_id,
        run_id=handle.run_id,
        wft=wft,
        through=wft,
        result_id=f"{handle.run_id}:late:0:victim",
        worker="victim",
        commands=[CompleteWorkflow(result=encode_value(666))],
    )
    with pytest.raises(StaleInput, match="of a completed run"):
        await send_input(
            client.nc, client.names, client.tenant, "default", "wft", encode(late), msg_id="late"
        )
    assert await handle.history() == history
    assert await handle.result() == 7


@asynccontextmanager
async def _orphaned_task(
    nats_url: str, prefix: str, test_dir: Path
) -> AsyncIterator[WorkflowHandle[Any]]:
    """A run whose pushed workflow task was taken, then the hub that pushed it and the
    worker that took it die together: no process remembers the task and no copy of it
    exists; only history shows it."""
    doomed = await start_hub(nats_url, prefix)
    victim = await start_worker(nats_url, test_dir, prefix=prefix, worker_id="victim")
    try:
        (test_dir / f"stall-{victim.pid}").write_text("60")
        async with Client(nats_url, prefix=prefix) as client:
            handle = await client.start(stalls, 3)
            await _stalled(test_dir, victim.pid)
            await doomed.kill()
            await victim.kill()
            assert await _tasks_published(client) == 1
            yield handle
    finally:
        await victim.kill()
        await doomed.kill()


async def test_a_dead_hubs_pushed_task_is_recovered_by_another_hub(
    nats_url: str, prefix: str, test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub in this process claims a silent hub's key after 4 s instead of 5.
    monkeypatch.setattr(immortal_hub._push, "HUB_DEAD_S", 4.0)
    async with _orphaned_task(nats_url, prefix, test_dir) as handle:
        async with running_hub(nats_url, prefix) as heir_hub:
            async with running_worker(nats_url, prefix, worker_id="heir"):
                assert await handle.result(timeout=20) == 7
        history = await handle.history()
    _assert_ran_once(history)
    assert _task_workers(history) == ["victim", "victim", "heir"]
    assert heir_hub._pushes.recovered == 1


async def test_a_hub_started_after_another_died_recovers_it_without_watching_it(
    nats_url: str, prefix: str, test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key's age is read from the server's clock, so a hub that starts after another
    died claims the dead one's key at once: hubs that crash-loop faster than HUB_DEAD_S
    still recover each other's pushes (the chaos suite's hub-sigkill stranded 19 runs of
    2,000 when each hub had to watch a key stay unchanged for HUB_DEAD_S itself)."""
    monkeypatch.setattr(immortal_hub._push, "HUB_DEAD_S", 4.0)
    monkeypatch.setattr(immortal_hub._push, "SETTLE_S", 1.0)
    async with _orphaned_task(nats_url, prefix, test_dir) as handle:
        await asyncio.sleep(4.5)  # the dead hub's key is older than HUB_DEAD_S now
        async with running_hub(nats_url, prefix) as heir_hub:
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(20):
                while heir_hub._pushes.recovered == 0:
                    await asyncio.sleep(0.05)
            recovered_after = asyncio.get_running_loop().time() - started
            async with running_worker(nats_url, prefix, worker_id="heir"):
                assert await handle.result(timeout=20) == 7
        history = await handle.history()
    # Sooner than it could have watched the key stay unchanged for HUB_DEAD_S itself.
    assert recovered_after < 4.0
    _assert_ran_once(history)
    assert _task_workers(history) == ["victim", "victim", "heir"]


async def test_a_hub_killed_right_after_appending_a_pushed_task(
    nats_url: str, prefix: str, test_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(immortal_hub._push, "HUB_DEAD_S", 4.0)
    doomed = await start_hub(nats_url, prefix)
    try:
        async with (
            Client(nats_url, prefix=prefix) as client,
            running_worker(nats_url, prefix, workflows=[stalls]),
        ):
            appended = asyncio.Event()

            async def on_append(msg: Msg) -> None:  # the timer's firing: a task to push
                if decode(Transition, msg.data).events[0].type is EventType.TIMER_FIRED:
                    await doomed.kill()  # before or after it pushed the task: both must do
                    appended.set()

            sub = await client.nc.subscribe(f"{prefix}.hist.>", cb=on_append)
            handle = await client.start(stalls, 3)
            await asyncio.wait_for(appended.wait(), 20)
            await sub.unsubscribe()
            async with running_hub(nats_url, prefix):
                assert await handle.result(timeout=20) == 7
            history = await handle.history()
    finally:
        await doomed.kill()
    _assert_ran_once(history)


async def test_a_server_restart_while_a_worker_holds_a_pushed_task(
    nats_server: NatsServer, nats_url: str, prefix: str, client: Client, hub: Hub, test_dir: Path
) -> None:
    holder = await start_worker(nats_url, test_dir, prefix=prefix, worker_id="holder")
    try:
        (test_dir / f"stall-{holder.pid}").write_text("3")
        handle = await client.start(stalls, 3)
        await _stalled(test_dir, holder.pid)
        # The task lives only in the worker's memory (and the hub's record) while the server
        # is down; the worker reports it after reconnecting, or its key expires meanwhile
        # and the hub publishes it durably: either way it closes once.
        await nats_server.restart()
        assert await handle.result(timeout=30) == 7
    finally:
        await holder.stop()
    _assert_ran_once(await handle.history())


async def test_a_worker_restarted_under_the_same_id_gets_its_pushed_task_back(
    nats_url: str, prefix: str, client: Client, hub: Hub, test_dir: Path
) -> None:
    first = await start_worker(nats_url, test_dir, prefix=prefix, worker_id="pod-0")
    try:
        (test_dir / f"stall-{first.pid}").write_text("60")
        handle = await client.start(stalls, 3)
        await _stalled(test_dir, first.pid)
        await first.kill()
    finally:
        await first.kill()
    # Back at once under the same id (a restarted pod), before the key's TTL runs out: the
    # key never expires, but its process changed, so the dead one's task is handed on.
    async with running_worker(nats_url, prefix, worker_id="pod-0"):
        assert await handle.result(timeout=15) == 7
    _assert_ran_once(await handle.history())
    assert hub._pushes.handed_off == 1
