"""Replay a recorded history against workflow code, with no server: the check to run in
CI before a deploy, so a change that would break runs already in flight fails the build.

>>> from immortal_worker.replay import replay_file
>>> result = replay_file("tests/histories/order-42.json", place_order)
>>> assert result.ok, result.divergence

The code runs on the worker's own :class:`~immortal_worker._instance.WorkflowInstance`,
exactly as a worker replays a run it did not have in memory: every recorded workflow task
is replayed and the commands the code issues are compared with the events history
recorded for them. The first mismatch is the divergence. Histories come from
``immortal workflow history ID --json`` (or ``immortal.history_to_json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immortal._context import WorkflowInfo
from immortal._definitions import WorkflowDefinition, activity_definition, workflow_definition
from immortal._errors import NonDeterminismError, PayloadError, UnknownWorkflowTypeError
from immortal._timeline import load_history
from immortal._wire import EventType, HistoryEvent
from immortal.codec import PayloadCodec
from immortal_worker._instance import WorkflowInstance

__all__ = ["Divergence", "ReplayResult", "replay", "replay_file"]


@dataclass(frozen=True)
class Divergence:
    """Where the code parts from history: the event, what history has there, and what the
    code issued instead (both as a ``NonDeterminismError`` would name them)."""

    event_id: int | None
    history: str
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ReplayResult:
    workflow_type: str
    events: int  # how many events were replayed
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


def replay(
    history: Sequence[HistoryEvent],
    workflow: Any,
    *,
    activities: Iterable[Any] = (),
    workflow_id: str = "replay",
    run_id: str = "replay",
    tenant: str = "default",
    codec: PayloadCodec | None = None,
) -> ReplayResult:
    """Re-execute ``workflow`` (a ``@workflow`` function, or several: the one whose name
    the history's ``WorkflowStarted`` names is used) against ``history``.

    Pass the run's own ``workflow_id`` and ``run_id`` if the code draws on
    ``ctx.random()`` or ``ctx.uuid4()``, which are seeded by them; ``activities`` supply
    declared options for activities the code schedules by name. Raises
    ``UnknownWorkflowTypeError`` if no given workflow has the recorded type.
    """
    events = list(history)
    started = next((e for e in events if e.type is EventType.WORKFLOW_STARTED), None)
    if started is None:
        raise PayloadError("the history has no WorkflowStarted event")
    workflow_type = str(started.attrs.get("workflow_type", ""))
    defn = _definition(workflow, workflow_type)
    info = WorkflowInfo(
        tenant=tenant,
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        queue=str(started.attrs.get("queue", "default")),
    )
    declared = {d.name: d for d in map(activity_definition, activities)}
    instance = WorkflowInstance(defn, info, "replayer", declared, codec)
    instance.events = events
    last_task = max(
        (e.id for e in events if e.type is EventType.WORKFLOW_TASK_SCHEDULED), default=0
    )
    try:
        instance.activate(last_task)
    except NonDeterminismError as exc:
        divergence = Divergence(exc.event_id, exc.history, exc.code, str(exc))
        return ReplayResult(workflow_type, len(events), divergence)
    finally:
        instance.close()
    return ReplayResult(workflow_type, len(events))


def replay_file(
    path: str | Path,
    workflow: Any,
    *,
    activities: Iterable[Any] = (),
    codec: PayloadCodec | None = None,
) -> ReplayResult:
    """:func:`replay` a JSON export, as the run it records (its ids are in the file);
    ``codec`` opens its sealed payloads (they are bound to those ids)."""
    export = load_history(Path(path).read_text())
    return replay(
        export.events,
        workflow,
        activities=activities,
        workflow_id=export.workflow_id or "replay",
        run_id=export.run_id or "replay",
        tenant=export.tenant or "default",
        codec=codec,
    )


def _definition(workflow: Any, workflow_type: str) -> WorkflowDefinition:
    candidates = list(workflow) if isinstance(workflow, list | tuple | set) else [workflow]
    defns = [workflow_definition(w) for w in candidates]
    for defn in defns:
        if defn.name == workflow_type:
            return defn
    names = ", ".join(sorted(d.name for d in defns)) or "none"
    raise UnknownWorkflowTypeError(
        f"the history is of workflow type {workflow_type!r}; the code given has {names}"
    )
