"""Schedules: start a workflow every interval or on a cron expression.

A schedule is two things: its definition in the ``imm-schedules`` bucket (what to start,
when, paused or not) and, while it is active, one repeating NATS scheduled message on
``imm.sched.<tenant>.<id>`` (``Nats-Schedule: @every 2s`` or a cron expression). The
server fires it into the queue's fired subject, where a hub starts one run per firing,
with an id derived from the firing, so a redelivered firing starts nothing twice. Pausing
removes the scheduled message; resuming publishes it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound

from immortal._codec import encode_args, unpack
from immortal._definitions import workflow_definition
from immortal._errors import ImmortalError
from immortal._jetstream import kv_scan
from immortal._timers import seconds
from immortal._wire import TimerFired, _Model, encode, now_ms
from immortal.codec._fields import schedule_binding
from immortal.codec._sealing import seal
from immortal.security.connection import relays_reads

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from immortal._client import Client

__all__ = ["ScheduleInfo", "ScheduleSpec", "Schedules", "nats_schedule"]


class ScheduleSpec(_Model):
    """A schedule's definition, as stored in ``imm-schedules``."""

    schedule_id: str
    workflow_type: str
    queue: str
    input: bytes
    every: float | None = None  # seconds
    cron: str | None = None  # six fields: seconds first
    paused: bool = False
    execution_timeout: float | None = None
    created_ts: int = 0


@dataclass(frozen=True)
class ScheduleInfo:
    schedule_id: str
    workflow_type: str
    queue: str
    spec: str  # "@every 2s" or the cron expression
    paused: bool
    created_at: datetime


def nats_schedule(spec: ScheduleSpec) -> str:
    """The ``Nats-Schedule`` header value for a schedule."""
    if spec.cron is not None:
        return spec.cron
    assert spec.every is not None
    return f"@every {spec.every:g}s"


def _cron(expr: str) -> str:
    fields = expr.split()
    if len(fields) == 5:  # the usual five fields: fire at second 0
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(f"cron expression {expr!r} needs 5 or 6 fields")
    return " ".join(fields)


class Schedules:
    """``client.schedules``: create, list, pause, resume and delete schedules."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def _kv(self) -> KeyValue:
        return await self._client._kv(self._client.names.bucket_schedules)

    async def create(
        self,
        schedule_id: str,
        workflow: Any,
        *args: Any,
        every: float | timedelta | None = None,
        cron: str | None = None,
        queue: str = "default",
        execution_timeout: float | timedelta | None = None,
    ) -> ScheduleInfo:
        """Start ``workflow(*args)`` every ``every`` or on ``cron``; replaces a schedule of
        the same id. Each run's workflow id is ``<schedule_id>@<firing time>``."""
        if (every is None) == (cron is None):
            raise ValueError("give exactly one of every= or cron=")
        every = seconds(every)
        if every is not None and (every < 1 or every != int(every)):
            raise ValueError("every= must be a whole number of seconds, at least 1")
        name = workflow if isinstance(workflow, str) else workflow_definition(workflow).name
        where = schedule_binding(self._client.tenant, schedule_id)
        spec = ScheduleSpec(
            schedule_id=schedule_id,
            workflow_type=name,
            queue=queue,
            input=seal(self._client.codec, where, encode_args(args)),
            every=every,
            cron=_cron(cron) if cron is not None else None,
            execution_timeout=seconds(execution_timeout),
            created_ts=now_ms(),
        )
        await self._client._register_queue(queue)
        await (await self._kv()).put(self._key(schedule_id), encode(spec))
        await self._arm(spec)
        return _info(spec)

    async def list(self) -> list[ScheduleInfo]:
        c = self._client
        keys = await kv_scan(c.nc, c.names.bucket_schedules, f"{c.tenant}.*")
        out = [_info(ScheduleSpec.model_validate(unpack(value))) for _, value in keys]
        return sorted(out, key=lambda s: s.schedule_id)

    async def get(self, schedule_id: str) -> ScheduleSpec:
        try:
            entry = await (await self._kv()).get(self._key(schedule_id))
        except (KeyNotFoundError, JsNotFound) as exc:
            raise ImmortalError(f"no schedule {schedule_id!r}") from exc
        return ScheduleSpec.model_validate(unpack(entry.value or b""))

    async def pause(self, schedule_id: str) -> None:
        """Stop starting runs (the definition stays; ``resume`` starts them again)."""
        spec = await self.get(schedule_id)
        spec.paused = True
        await (await self._kv()).put(self._key(schedule_id), encode(spec))
        await self._disarm(schedule_id)

    async def resume(self, schedule_id: str) -> None:
        spec = await self.get(schedule_id)
        spec.paused = False
        await (await self._kv()).put(self._key(schedule_id), encode(spec))
        await self._arm(spec)

    async def delete(self, schedule_id: str) -> None:
        await self.get(schedule_id)
        await self._disarm(schedule_id)
        await (await self._kv()).delete(self._key(schedule_id))

    def _key(self, schedule_id: str) -> str:
        return self._client.names.schedule_key(self._client.tenant, schedule_id)

    async def _arm(self, spec: ScheduleSpec) -> None:
        names, tenant = self._client.names, self._client.tenant
        body = TimerFired(
            workflow_id=spec.schedule_id, run_id="", timer=spec.schedule_id, kind="schedule"
        )
        await self._client.nc.jetstream().publish(
            names.schedule_subject(tenant, spec.schedule_id),
            encode(body),
            headers={
                "Nats-Schedule": nats_schedule(spec),
                "Nats-Schedule-Target": names.fired_subject(tenant, spec.queue),
            },
        )

    async def _disarm(self, schedule_id: str) -> None:
        names, nc = self._client.names, self._client.nc
        subject = names.schedule_subject(self._client.tenant, schedule_id)
        if relays_reads(nc):
            # A tenant may not purge the stream (the purge filter is in the request body):
            # a message that rolls the subject up replaces the schedule instead.
            await nc.jetstream().publish(subject, b"", headers={"Nats-Rollup": "sub"})
            return
        await nc.jetstream().purge_stream(names.stream_timers, subject=subject)


def _info(spec: ScheduleSpec) -> ScheduleInfo:
    return ScheduleInfo(
        schedule_id=spec.schedule_id,
        workflow_type=spec.workflow_type,
        queue=spec.queue,
        spec=nats_schedule(spec),
        paused=spec.paused,
        created_at=datetime.fromtimestamp(spec.created_ts / 1000, tz=UTC),
    )
