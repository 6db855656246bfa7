"""A schedule fired: the start it makes, unless the schedule is paused or gone.

The run's workflow id is ``<schedule>@<firing time>`` and its run id derives from the
firing's stream sequence, so a redelivered firing starts nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound

from immortal._codec import unpack
from immortal._names import Names
from immortal._schedules import ScheduleSpec
from immortal._transient import key_value
from immortal._wire import StartWorkflow, TimerFired

__all__ = ["scheduled_start"]

log = logging.getLogger(__name__)


async def scheduled_start(
    js: JetStreamContext, names: Names, tenant: str, fired: TimerFired, msg: Msg
) -> tuple[str, StartWorkflow] | None:
    """(queue, start) for the run this firing makes, or None if it makes none."""
    kv = await key_value(js, names.bucket_schedules)
    try:
        entry = await kv.get(names.schedule_key(tenant, fired.timer))
        spec = ScheduleSpec.model_validate(unpack(entry.value or b""))
    except (KeyNotFoundError, JsNotFound):
        log.info("schedule %s/%s fired but no longer exists", tenant, fired.timer)
        return None
    if spec.paused:
        log.info("schedule %s/%s fired while paused: nothing started", tenant, fired.timer)
        return None
    at = msg.metadata.timestamp or datetime.now(UTC)
    seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
    start = StartWorkflow(
        workflow_id=f"{spec.schedule_id}@{at.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z",
        run_id=uuid.uuid5(uuid.NAMESPACE_URL, f"immortal:sched/{tenant}/{seq}").hex,
        workflow_type=spec.workflow_type,
        input=spec.input,
        execution_timeout=spec.execution_timeout,
        schedule_id=spec.schedule_id,  # names what a sealed input is bound to
    )
    return spec.queue, start
