"""The field names payloads are bound to, shared by who seals and who opens them.

Every name is computable from what both sides know: the sealer when it makes the payload,
the reader from the event that carries it (activities by their command's ``seq``, which
the hub records in ``ActivityScheduled`` and hands to the activity task).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from immortal.codec._binding import Binding

__all__ = [
    "CONTINUE_INPUT",
    "FAILURE",
    "INPUT",
    "LOG",
    "RESULT",
    "STATUS",
    "activity_field",
    "child_input_field",
    "schedule_binding",
    "signal_field",
    "start_binding",
]

INPUT = "input"
RESULT = "result"
FAILURE = "failure"
STATUS = "status"
LOG = "log"
# A run's continue-as-new input is sealed by the run that continues (the new run's id is
# the hub's to choose): bound to that run, which the new run's start names.
CONTINUE_INPUT = "continue:input"


def signal_field(name: str) -> str:
    return f"signal:{name}"


def activity_field(seq: int, part: str) -> str:
    """``part``: input, result, failure or heartbeat."""
    return f"activity:{seq}:{part}"


def child_input_field(child_workflow_id: str) -> str:
    """A child's input is sealed by its parent (the child's run id is the hub's to
    choose): bound to the parent's run and the child's workflow id."""
    return f"child:{child_workflow_id}:input"


def schedule_binding(tenant: str, schedule_id: str) -> Binding:
    """A schedule's arguments are sealed when it is created, before any run exists (each
    firing's run id is the hub's to choose): bound to the schedule."""
    return Binding(tenant, f"schedule:{schedule_id}", "", INPUT)


def start_binding(tenant: str, workflow_id: str, run_id: str, attrs: Mapping[str, Any]) -> Binding:
    """What a ``WorkflowStarted`` event's input is bound to: the run itself, the parent
    that started it as a child, the run it continues, or the schedule that fired it."""
    parent = attrs.get("parent")
    if isinstance(parent, dict) and parent.get("run_id"):
        return Binding(
            tenant,
            str(parent.get("workflow_id", "")),
            str(parent["run_id"]),
            child_input_field(workflow_id),
        )
    continued = attrs.get("continued_from")
    if continued:
        return Binding(tenant, workflow_id, str(continued), CONTINUE_INPUT)
    schedule = attrs.get("schedule_id")
    if schedule:
        return schedule_binding(tenant, str(schedule))
    return Binding(tenant, workflow_id, run_id, INPUT)
