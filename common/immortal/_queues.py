"""Queue depth and lag, read from the consumers: ``client.queues()`` and ``immortal queues``."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError as JsNotFound

from immortal._names import Names

__all__ = ["QueueStats", "queue_stats"]


@dataclass(frozen=True)
class QueueStats:
    """Backlog and in-flight work of one tenant queue: the autoscaling signal.

    ``*_backlog`` is what no worker has taken yet (consumer pending); ``*_in_flight`` is
    what workers hold under lease (ack pending).
    """

    queue: str
    workflow_backlog: int
    workflow_in_flight: int
    activity_backlog: int
    activity_in_flight: int
    redelivered: int
    input_backlog: int  # inputs queued durably for the hubs


async def queue_stats(nc: NATS, names: Names, tenant: str, queues: list[str]) -> list[QueueStats]:
    """Backlog and in-flight work of each of ``tenant``'s ``queues``."""
    return [await _one(nc, names, tenant, q) for q in queues]


async def _one(nc: NATS, names: Names, tenant: str, queue: str) -> QueueStats:
    js = nc.jetstream()

    async def consumer(stream: str, name: str) -> tuple[int, int, int]:
        try:
            info = await js.consumer_info(stream, name)
        except JsNotFound:  # nobody has served it yet: its backlog sits in the stream
            return 0, 0, 0
        return info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0

    wf = await consumer(names.stream_tasks, names.task_consumer(tenant, queue, "wf"))
    act = await consumer(names.stream_tasks, names.task_consumer(tenant, queue, "act"))
    hub = await consumer(names.stream_in, names.hub_consumer(tenant, queue))
    return QueueStats(
        queue=queue,
        workflow_backlog=wf[0],
        workflow_in_flight=wf[1],
        activity_backlog=act[0],
        activity_in_flight=act[1],
        redelivered=wf[2] + act[2],
        input_backlog=hub[0] + hub[1],
    )
