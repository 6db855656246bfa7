"""A schedule's definition in ``imm-schedules`` and its repeating scheduled message: the
writes a hub makes once a change is decided (a tenant's connection may make neither)."""

from __future__ import annotations

import weakref
from typing import Any

from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._codec import unpack
from immortal._names import Names
from immortal._schedules import ScheduleSpec, nats_schedule
from immortal._transient import key_value
from immortal._wire import TimerFired, encode

__all__ = ["arm", "delete_schedule", "disarm", "read_schedule", "write_schedule"]

# One handle per JetStream context: opening the bucket is a stream-info request, and a
# firing or a change would otherwise pay one each.
_handles: weakref.WeakKeyDictionary[JetStreamContext, KeyValue] = weakref.WeakKeyDictionary()


async def _bucket(js: JetStreamContext, names: Names) -> KeyValue:
    found = _handles.get(js)
    if found is None:
        found = _handles[js] = await key_value(js, names.bucket_schedules)
    return found


async def read_schedule(
    js: JetStreamContext, names: Names, tenant: str, schedule_id: str
) -> ScheduleSpec | None:
    """The stored definition, or None if there is none."""
    kv = await _bucket(js, names)
    try:
        entry = await kv.get(names.schedule_key(tenant, schedule_id))
    except (KeyNotFoundError, JsNotFound):
        return None
    return ScheduleSpec.model_validate(unpack(entry.value or b""))


async def write_schedule(js: JetStreamContext, names: Names, tenant: str, spec: Any) -> None:
    kv = await _bucket(js, names)
    await kv.put(names.schedule_key(tenant, spec.schedule_id), encode(spec))


async def delete_schedule(
    js: JetStreamContext, names: Names, tenant: str, schedule_id: str
) -> None:
    kv = await _bucket(js, names)
    await kv.delete(names.schedule_key(tenant, schedule_id))


async def arm(js: JetStreamContext, names: Names, tenant: str, spec: ScheduleSpec) -> None:
    """Publish the schedule's repeating message (replacing any earlier one: one per subject)."""
    body = TimerFired(
        workflow_id=spec.schedule_id, run_id="", timer=spec.schedule_id, kind="schedule"
    )
    await js.publish(
        names.schedule_subject(tenant, spec.schedule_id),
        encode(body),
        headers={
            "Nats-Schedule": nats_schedule(spec),
            "Nats-Schedule-Target": names.fired_subject(tenant, spec.queue),
        },
    )


async def disarm(js: JetStreamContext, names: Names, tenant: str, schedule_id: str) -> None:
    subject = names.schedule_subject(tenant, schedule_id)
    await js.purge_stream(names.stream_timers, subject=subject)
