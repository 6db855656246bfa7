"""The tenant's policy on schedules: each change before the hub writes it, and each firing
before its run starts.

- **Changes** (``schedule_refusal``): ``schedule.create`` (also a replace), ``.pause``,
  ``.resume``, ``.delete`` for the verified principal that asks, on the schedule's
  tenant, queue, workflow type and id (a create also offers its ``input``, as a start
  does). Denied: nothing is written.
- **Firings** (``firing_refused``): the start a firing makes is decided as
  ``workflow.start`` for the schedule's author (the principal its definition records),
  so taking the right away from the author stops its firings. Denied: no run. A schedule
  that records no author (made while auth was off) is denied once the tenant has a
  policy: there is no one to decide for.

Every decision goes to the decision log, the schedule id in its resource.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from immortal._schedules import ScheduleSpec
from immortal._wire import StartWorkflow
from immortal.policy import Decision, Resource
from immortal_hub.policy._gate import (
    PolicyGate,
    _acting_for,
    _event_attrs,
    _principal,
    input_fields,
)

__all__ = ["firing_refused", "schedule_author", "schedule_refusal"]

log = logging.getLogger(__name__)


def schedule_author(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a definition keeps of the principal that made it: its claims, as a run keeps
    its starter's (never a token), and the key that signed the change, if one did; None
    without a verified principal (auth off)."""
    if not record:
        return None
    author = _acting_for(record)
    if record.get("key_id"):
        author["key_id"] = record["key_id"]
    return author


def schedule_refusal(
    gate: PolicyGate, tenant: str, principal: Mapping[str, Any], op: str, spec: ScheduleSpec
) -> Decision | None:
    """The policy's deny of this change by ``principal`` (None: it may be made)."""
    policy = gate.watch.get(tenant)
    if policy is None:
        return None  # roles alone: the broker let only a writer ask
    if not gate.secure:
        gate._warn_unverified(tenant)
        return None
    fields, unreadable = input_fields(spec.input) if op == "create" else (None, None)
    resource = Resource(
        tenant=tenant,
        queue=spec.queue,
        workflow_type=spec.workflow_type,
        schedule_id=spec.schedule_id,
        input=fields,
        input_unreadable=unreadable,
    )
    action = f"schedule.{op}"
    decision = policy.engine.decide(_principal(principal, tenant), action, resource)
    gate._log(tenant, principal, action, resource, decision, _digest(spec.input))
    return None if decision.allow else decision


def firing_refused(gate: PolicyGate, tenant: str, queue: str, start: StartWorkflow) -> bool:
    """Whether the tenant's policy refuses this firing's start; an allowed one is marked
    for its run's history (``PolicyDecision``)."""
    policy = gate.watch.get(tenant)
    if policy is None or not gate.secure:
        return False
    fields, unreadable = input_fields(start.input)
    resource = Resource(
        tenant=tenant,
        queue=queue,
        workflow_type=start.workflow_type,
        workflow_id=start.workflow_id,
        schedule_id=start.schedule_id,
        input=fields,
        input_unreadable=unreadable,
    )
    author = start.acting_for
    if author is None:
        decision = Decision(
            allow=False,
            reason=(
                f"denied: schedule {start.schedule_id} records no author (it was made while "
                "auth was off): create it again to have its firings decided"
            ),
            policy_version=policy.version,
        )
        author = {"subject": "unknown", "tenant": tenant}
    else:
        decision = policy.engine.decide(_principal(author, tenant), "workflow.start", resource)
    gate._log(tenant, author, "workflow.start", resource, decision, _digest(start.input))
    if decision.allow:
        start.decision = _event_attrs(decision)
        return False
    log.info("schedule %s/%s: firing refused: %s", tenant, start.schedule_id, decision.reason)
    return True


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
