"""The hub's OpenTelemetry metrics: queue depth and lag per tenant queue, and what it did.

Gauges read JetStream consumer info, which costs a request per consumer, so they are not
read on every collection: the first collection starts a poller that refreshes every
``interval`` seconds, and each collection reports the latest figures. Without an SDK
configured (OpenTelemetry's default no-op provider) nothing is ever collected, so nothing
is polled.

Instruments (attributes in brackets); docs/architecture.md lists them too:

- ``immortal.queue.inputs.pending`` gauge [tenant, queue]: inputs queued durably in
  ``IMM_IN``, not yet taken by a hub
- ``immortal.queue.tasks.pending`` gauge [tenant, queue, kind = workflow | activity]: tasks
  waiting for a worker
- ``immortal.queue.tasks.ack_pending`` gauge [tenant, queue, kind]: tasks held by workers
  under lease
- ``immortal.hub.inputs.in_flight`` gauge [tenant]: inputs this hub is applying now
- ``immortal.hub.transitions`` counter [tenant, queue]: transitions appended to history
- ``immortal.hub.tasks.handed_back`` counter [tenant, queue]: tasks of dead workers handed
  back before their lease ran out
- ``immortal.hub.inputs.refused`` counter [tenant]: request-reply inputs answered ``busy``
  (their senders queue them durably)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider

from immortal._names import Names, TaskKind

__all__ = ["HubMetrics", "QueueDepth"]

log = logging.getLogger(__name__)

_KINDS: dict[TaskKind, str] = {"wf": "workflow", "act": "activity"}


@dataclass(frozen=True)
class QueueDepth:
    inputs_pending: int | None = None  # None: the consumer does not exist (yet)
    tasks_pending: dict[str, int | None] | None = None  # by kind
    tasks_ack_pending: dict[str, int | None] | None = None


class HubMetrics:
    """Instruments of one hub; ``queues`` and ``in_flight`` are read at collection."""

    def __init__(
        self,
        names: Names,
        *,
        queues: Callable[[], Iterable[tuple[str, str]]],
        in_flight: Callable[[], dict[str, int]],
        meter_provider: MeterProvider | None = None,
        interval: float = 5.0,
    ) -> None:
        self.names = names
        self.interval = interval
        self._queues = queues
        self._in_flight = in_flight
        self.depths: dict[tuple[str, str], QueueDepth] = {}
        self.polls = 0  # refreshes so far, for tests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._js: JetStreamContext | None = None
        self._poller: asyncio.Task[None] | None = None
        meter = (meter_provider or get_meter_provider()).get_meter("immortal.hub")
        self.transitions = meter.create_counter(
            "immortal.hub.transitions", unit="{transition}", description="transitions appended"
        )
        self.handed_back = meter.create_counter(
            "immortal.hub.tasks.handed_back",
            unit="{task}",
            description="tasks of dead workers handed back before their lease ran out",
        )
        self.refused = meter.create_counter(
            "immortal.hub.inputs.refused",
            unit="{input}",
            description="request-reply inputs answered busy (the sender queues them durably)",
        )
        meter.create_observable_gauge(
            "immortal.queue.inputs.pending",
            callbacks=[self._observe_inputs],
            unit="{input}",
            description="inputs queued durably in IMM_IN, not yet taken by a hub",
        )
        meter.create_observable_gauge(
            "immortal.queue.tasks.pending",
            callbacks=[self._observe_tasks("pending")],
            unit="{task}",
            description="tasks waiting for a worker",
        )
        meter.create_observable_gauge(
            "immortal.queue.tasks.ack_pending",
            callbacks=[self._observe_tasks("ack_pending")],
            unit="{task}",
            description="tasks held by workers under lease",
        )
        meter.create_observable_gauge(
            "immortal.hub.inputs.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{input}",
            description="inputs this hub is applying now",
        )

    def start(self, js: JetStreamContext) -> None:
        """Bind to the hub's loop; polling starts at the first collection."""
        self._js = js
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def refresh(self) -> None:
        """Read every served queue's consumers once."""
        assert self._js is not None
        depths = {}
        for tenant, queue in list(self._queues()):
            depths[(tenant, queue)] = await self._depth(self._js, tenant, queue)
        self.depths = depths  # replaced whole: collections may read from another thread
        self.polls += 1

    # -- collection (possibly on the reader's thread) ----------------------------------------

    def _collected(self) -> None:
        loop = self._loop
        if self._poller is None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._start_polling)

    def _start_polling(self) -> None:
        if self._poller is None and self._js is not None:
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # reconnects: the gauges keep their last figures
                log.debug("queue depth poll failed: %s", exc)
            await asyncio.sleep(self.interval)

    def _observe_inputs(self, options: CallbackOptions) -> Iterable[Observation]:
        self._collected()
        for (tenant, queue), d in list(self.depths.items()):
            if d.inputs_pending is not None:
                yield Observation(d.inputs_pending, {"tenant": tenant, "queue": queue})

    def _observe_tasks(self, which: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            self._collected()
            for (tenant, queue), d in list(self.depths.items()):
                counts = d.tasks_pending if which == "pending" else d.tasks_ack_pending
                for kind, n in (counts or {}).items():
                    if n is not None:
                        yield Observation(n, {"tenant": tenant, "queue": queue, "kind": kind})

        return observe

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for tenant, n in self._in_flight().items():
            yield Observation(n, {"tenant": tenant})

    # -- helpers -----------------------------------------------------------------------

    async def _depth(self, js: JetStreamContext, tenant: str, queue: str) -> QueueDepth:
        n = self.names
        inputs = await _counts(js, n.stream_in, n.hub_consumer(tenant, queue))
        pending: dict[str, int | None] = {}
        ack_pending: dict[str, int | None] = {}
        for kind, label in _KINDS.items():
            got = await _counts(js, n.stream_tasks, n.task_consumer(tenant, queue, kind))
            pending[label] = got[0] if got else None
            ack_pending[label] = got[1] if got else None
        return QueueDepth(
            inputs_pending=inputs[0] if inputs else None,
            tasks_pending=pending,
            tasks_ack_pending=ack_pending,
        )


async def _counts(js: JetStreamContext, stream: str, consumer: str) -> tuple[int, int] | None:
    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:  # no worker has served the queue yet
        return None
    return info.num_pending or 0, info.num_ack_pending or 0
