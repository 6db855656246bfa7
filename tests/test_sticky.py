"""Sticky execution: a run's workflow tasks go to the worker that has it cached; when that
worker dies, any other worker replays the run."""

from __future__ import annotations

from pathlib import Path

from immortal import Client, EventType
from tests.helpers import assert_well_formed, running_worker, wait_for_history
from tests.procs import start_worker
from tests.workflows import chain, waits_for_go


async def test_workflow_tasks_stay_with_the_worker_that_cached_the_run(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with (
        running_worker(nats_url, prefix, worker_id="sticky-a") as a,
        running_worker(nats_url, prefix, worker_id="sticky-b") as b,
    ):
        handles = [await client.start(chain, 4) for _ in range(12)]
        for h in handles:
            await h.result(timeout=30)
    served = []
    for h in handles:
        history = await h.history()
        assert_well_formed(history)
        workers = {
            e.attrs["worker"] for e in history if e.type is EventType.WORKFLOW_TASK_COMPLETED
        }
        assert len(workers) == 1, workers  # five workflow tasks, one worker
        served.append(workers.pop())
    assert a.replays + b.replays == len(handles)  # each run read its history once


async def test_a_dead_sticky_workers_run_is_replayed_by_another(
    nats_url: str, prefix: str, client: Client, tmp_path: Path
) -> None:
    workers = {
        wid: await start_worker(nats_url, tmp_path, prefix=prefix, worker_id=wid)
        for wid in ("sticky-1", "sticky-2")
    }
    try:
        handle = await client.start(waits_for_go, 5)
        history = await wait_for_history(
            client, handle.workflow_id, handle.run_id,
            lambda h: sum(e.type is EventType.WORKFLOW_TASK_COMPLETED for e in h) >= 2,
        )  # fmt: skip
        [owner] = {
            e.attrs["worker"] for e in history if e.type is EventType.WORKFLOW_TASK_COMPLETED
        }
        await workers[owner].kill()
        # Signalled at once: the hub still sees the owner alive (its key has not expired),
        # so the workflow task goes to the dead worker's subject until the hub moves it.
        await handle.signal("go")
        assert await handle.result(timeout=30) == 20
    finally:
        for proc in workers.values():
            await proc.stop()
    history = await handle.history()
    assert_well_formed(history)
    completed = [e.attrs["worker"] for e in history if e.type is EventType.WORKFLOW_TASK_COMPLETED]
    assert completed[-1] != owner
