"""A schedule fired: the start it makes, unless the schedule is paused or gone.

The run's workflow id is ``<schedule>@<firing time>`` and its run id derives from the
firing's stream sequence, so a redelivered firing starts nothing twice. The run acts for
the schedule's author (``ScheduleSpec.principal``); with a tenant policy, the hub decides
the start for that principal first (``policy.firing_refused``).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from immortal._names import Names
from immortal._wire import StartWorkflow, TimerFired
from immortal_hub.schedules._store import read_schedule

__all__ = ["scheduled_start"]

log = logging.getLogger(__name__)


async def scheduled_start(
    js: JetStreamContext, names: Names, tenant: str, fired: TimerFired, msg: Msg
) -> tuple[str, StartWorkflow] | None:
    """(queue, start) for the run this firing makes, or None if it makes none."""
    spec = await read_schedule(js, names, tenant, fired.timer)
    if spec is None:
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
        acting_for=spec.principal,  # its author (None: made with auth off)
    )
    return spec.queue, start
