"""Sticky workflow tasks: a run's next workflow task goes to the worker that has it cached.

The worker that completed a run's last workflow task is recorded in the run state
(``sticky``). While that worker is alive (its key in ``imm-workers``), the hub publishes
the run's next workflow task to that worker's own subject in ``IMM_TASKS``,
``imm.task.<t>.<q>.wf.<worker>``, which only its consumer reads: no other worker has to
replay the run from its history. When the worker is gone (its key expired or deleted),
every hub moves whatever waits on that subject to the queue's shared subject, where any
worker takes it and replays the run. A worker presumed dead that comes back (a server
restart outlasted its key's TTL) registers again and keeps its consumer. The move runs at
once and again a few seconds later, for a task published while the news of the death was
on its way; moved tasks carry new message ids, so two hubs moving the same task publish
it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from immortal._jetstream import read_subject
from immortal._names import Names

__all__ = ["STICKY_RECHECK_S", "move_sticky_tasks"]

log = logging.getLogger(__name__)

STICKY_RECHECK_S = 3.0


async def move_sticky_tasks(
    nc: Any, names: Names, tenant: str, queue: str, worker_id: str, *, recheck: bool = True
) -> int:
    """Hand the tasks waiting for a gone worker to every worker of the queue."""
    # Its consumer stays: a worker presumed dead may only have been cut off (a server
    # restart, a partition) and come back; a dead one's consumer goes by inactivity.
    moved = await _move_once(nc, names, tenant, queue, worker_id)
    if recheck:
        await asyncio.sleep(STICKY_RECHECK_S)
        moved += await _move_once(nc, names, tenant, queue, worker_id)
    return moved


async def _move_once(nc: Any, names: Names, tenant: str, queue: str, worker_id: str) -> int:
    js = nc.jetstream()
    subject = names.sticky_subject(tenant, queue, worker_id)
    shared = names.task_subject(tenant, queue, "wf")
    moved = 0
    async for msg in read_subject(nc, names.stream_tasks, subject):
        msg_id = msg.headers.get("Nats-Msg-Id", str(msg.seq))
        await js.publish(shared, msg.data, headers={"Nats-Msg-Id": f"{msg_id}:moved"})
        with contextlib.suppress(Exception):  # another hub moved it first
            await js.delete_msg(names.stream_tasks, msg.seq)
        moved += 1
    if moved:
        log.warning(
            "worker %s is gone: %d cached run(s) handed to queue %s", worker_id, moved, queue
        )
    return moved
