"""What an appended transition asks the hub to publish: tasks, timers, inputs to other runs.

Pure functions of the run state and the events just appended, so a hub that crashed
after appending re-emits the same messages (deduped by their ids) from the state alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from immortal._names import InputKind, TaskKind
from immortal._wire import (
    CLOSING_EVENTS,
    ActivityResult,
    ActivityTask,
    ChildClosed,
    EventType,
    HistoryEvent,
    OpenActivity,
    OpenChild,
    OpenTimer,
    ParentRef,
    RequestCancel,
    RunState,
    RunStatus,
    StartWorkflow,
    TimerFired,
    WorkflowTask,
)

__all__ = [
    "Emission",
    "attempt_timers",
    "emissions_for",
    "open_emissions",
    "workflow_task_emission",
]


@dataclass(frozen=True)
class Emission:
    """What a transition asks the hub to publish once it is appended.

    A task (``wf``, ``act``); a durable timer (``timer``, firing at ``due_ms`` onto the
    queue's fired subject); a timer to remove (``purge``); or an input to another run
    (``input``: a child's start or cancel, a parent's child-closed, a continued run's
    start). ``msg_id`` dedupes re-emission.
    """

    kind: TaskKind | Literal["timer", "purge", "input"]
    queue: str
    msg_id: str
    body: (
        WorkflowTask
        | ActivityTask
        | TimerFired
        | StartWorkflow
        | RequestCancel
        | ChildClosed
        | ActivityResult  # a policy's refusal of an activity task (``policy._gate``)
    )
    due_ms: int | None = None
    input_kind: InputKind | None = None
    sticky: str | None = None  # a workflow task's preferred worker: the one that has it cached


def emissions_for(
    state: RunState, events: list[HistoryEvent], hist_seq: int, prev_seq: int
) -> list[Emission]:
    """The tasks that ``events`` (just appended at ``hist_seq``, after ``prev_seq``) ask for."""
    out: list[Emission] = []
    for ev in events:
        if ev.type is EventType.WORKFLOW_TASK_SCHEDULED and state.wft == ev.id:
            task = _workflow_task(state, ev.id, hist_seq)
            assert isinstance(task.body, WorkflowTask)
            task.body.prev_seq = prev_seq
            task.body.events = events
            out.append(task)
        elif ev.type is EventType.WORKFLOW_STARTED:
            for kind, seconds in (
                ("execution_timeout", state.execution_timeout),
                ("run_timeout", state.run_timeout),
            ):
                if seconds is not None:
                    due = ev.ts + round(seconds * 1000)
                    out.append(_timer(state, kind.replace("_", "-"), kind, due))
        elif ev.type in CLOSING_EVENTS:
            out.extend(_closing_emissions(state))
        else:
            out.extend(_activity_emissions(state, ev) or _toolbox_emissions(state, ev))
    return out


def _activity_emissions(state: RunState, ev: HistoryEvent) -> list[Emission]:
    out: list[Emission] = []
    if ev.type is EventType.ACTIVITY_SCHEDULED and ev.id in state.activities:
        act = state.activities[ev.id]
        out.extend(_dispatch(state, ev.id, act, ev.ts))
        if act.schedule_to_close is not None:
            due = ev.ts + round(act.schedule_to_close * 1000)
            out.append(_timer(state, f"s2c-{ev.id}", "schedule_to_close", due, ev.id))
    elif ev.type is EventType.ACTIVITY_HEARTBEAT and ev.caused_by in state.activities:
        act = state.activities[ev.caused_by]
        if act.heartbeat_timeout is not None:
            due = ev.ts + round(act.heartbeat_timeout * 1000)
            timer = f"hb-{ev.caused_by}-{act.attempt}"
            out.append(_timer(state, timer, "heartbeat_timeout", due, ev.caused_by, act.attempt))
    elif ev.type is EventType.ACTIVITY_ATTEMPT_STARTED and ev.caused_by in state.activities:
        out.extend(attempt_timers(state, ev.caused_by, ev.ts))
    elif ev.type in _RETRY_EVENTS and ev.caused_by in state.activities:
        act = state.activities[ev.caused_by]
        if act.retry_at is None:
            out.extend(_dispatch(state, ev.caused_by, act, ev.ts))
        else:
            out.append(_activity_emission(state, ev.caused_by, act))
    return out


def attempt_timers(state: RunState, sid: int, started_ms: int) -> list[Emission]:
    """The timers of an attempt that began at ``started_ms`` (the hub's clock, when the
    worker confirmed it counts): its start-to-close and its first heartbeat deadline.

    Armed once per attempt: their ids leave the due time out, so a second confirmation of
    the same attempt (the worker's own retry, or a copy of its signed input replayed
    within the duplicate window, ``_signatures``) is deduped and moves no deadline."""
    act = state.activities[sid]
    out = []
    if act.start_to_close is not None:
        due = started_ms + round(act.start_to_close * 1000)
        timer = f"stc-{sid}-{act.attempt}"
        out.append(_timer(state, timer, "start_to_close", due, sid, act.attempt, once=True))
    if act.heartbeat_timeout is not None:
        due = started_ms + round(act.heartbeat_timeout * 1000)
        timer = f"hb-{sid}-{act.attempt}"
        out.append(_timer(state, timer, "heartbeat_timeout", due, sid, act.attempt, once=True))
    return out


def _toolbox_emissions(state: RunState, ev: HistoryEvent) -> list[Emission]:
    if ev.type is EventType.TIMER_STARTED and ev.id in state.timers:
        return [_user_timer(state, ev.id, state.timers[ev.id])]
    if ev.type is EventType.TIMER_CANCELED and ev.attrs.get("timer") is not None:
        return [_purge(state, int(ev.attrs["timer"]))]
    if ev.type is EventType.CHILD_WORKFLOW_SCHEDULED and ev.id in state.children:
        return [_child_start(state, ev.id, state.children[ev.id])]
    return []


def _user_timer(state: RunState, tid: int, timer: OpenTimer) -> Emission:
    return _timer(state, f"t-{tid}", "timer", timer.due, tid)


def _purge(state: RunState, tid: int) -> Emission:
    body = TimerFired(workflow_id=state.workflow_id, run_id=state.run_id, timer=f"t-{tid}")
    return Emission("purge", state.queue, "", body)


def _child_start(state: RunState, sid: int, child: OpenChild) -> Emission:
    body = StartWorkflow(
        workflow_id=child.workflow_id,
        run_id=child.run_id,
        workflow_type=child.workflow_type,
        input=child.input,
        execution_timeout=child.execution_timeout,
        acting_for=state.principal,  # the child acts for the same principal
        parent=ParentRef(
            workflow_id=state.workflow_id, run_id=state.run_id, queue=state.queue, scheduled_id=sid
        ),
    )
    return Emission("input", child.queue, f"start:{child.run_id}", body, input_kind="start")


def _closing_emissions(state: RunState) -> list[Emission]:
    """A closed run's loose ends: its timers purged, its children asked to stop, its parent
    told, or (continue-as-new) its next run started."""
    out = [_purge(state, tid) for tid in state.timers]
    for child in state.children.values():
        body = RequestCancel(
            workflow_id=child.workflow_id,
            run_id=child.run_id,
            reason=f"parent run {state.run_id} closed ({state.status})",
            request_id=f"parent-closed:{state.run_id}",
        )
        out.append(Emission("input", child.queue, f"cancel:{child.run_id}", body, None, "cancel"))
    if state.status is RunStatus.CONTINUED_AS_NEW and state.continued_run_id is not None:
        remaining = None
        if state.execution_timeout is not None:  # the execution timeout spans all its runs
            deadline = state.started_ts + round(state.execution_timeout * 1000)
            remaining = max(0.001, (deadline - (state.closed_ts or 0)) / 1000)
        start = StartWorkflow(
            workflow_id=state.workflow_id,
            run_id=state.continued_run_id,
            workflow_type=state.workflow_type,
            input=state.close_payload or b"\x90",
            execution_timeout=remaining,
            run_timeout=state.run_timeout,
            parent=state.parent,
            continued_from=state.run_id,
            acting_for=state.principal,
        )
        msg_id = f"start:{state.continued_run_id}"
        out.append(Emission("input", state.queue, msg_id, start, input_kind="start"))
    elif state.parent is not None:
        parent = state.parent
        closed = ChildClosed(
            workflow_id=parent.workflow_id,
            run_id=parent.run_id,
            scheduled_id=parent.scheduled_id,
            child_workflow_id=state.workflow_id,
            child_run_id=state.run_id,
            status=str(state.status),
            result=state.close_payload,
            failure=state.close_failure,
        )
        out.append(Emission("input", parent.queue, f"child:{state.run_id}", closed, None, "child"))
    return out


_RETRY_EVENTS = (EventType.ACTIVITY_ATTEMPT_FAILED, EventType.ACTIVITY_ATTEMPT_SCHEDULED)


def open_emissions(state: RunState, hist_seq: int) -> list[Emission]:
    """Everything the run has outstanding: re-emitted (deduped by id) after a hub crash."""
    if state.status.closed:
        return _closing_emissions(state)
    out = [_activity_emission(state, sid, act) for sid, act in state.activities.items()]
    out.extend(_user_timer(state, tid, timer) for tid, timer in state.timers.items())
    out.extend(_child_start(state, sid, child) for sid, child in state.children.items())
    if state.wft is not None:
        out.append(_workflow_task(state, state.wft, hist_seq))
    return out


def workflow_task_emission(state: RunState, hist_seq: int) -> Emission:
    """The run's open workflow task, as re-emitted (the worker reads what it lacks)."""
    assert state.wft is not None
    return _workflow_task(state, state.wft, hist_seq)


def _workflow_task(state: RunState, wft: int, hist_seq: int) -> Emission:
    body = WorkflowTask(
        workflow_id=state.workflow_id,
        run_id=state.run_id,
        workflow_type=state.workflow_type,
        queue=state.queue,
        wft=wft,
        hist_seq=hist_seq,
    )
    return Emission("wf", state.queue, f"{state.run_id}:{wft}", body, sticky=state.sticky)


def _dispatch(state: RunState, sid: int, act: OpenActivity, now: int) -> list[Emission]:
    """An attempt's task, and its schedule-to-start timer if it has one."""
    out = [_activity_task(state, sid, act)]
    if act.schedule_to_start is not None:
        due = now + round(act.schedule_to_start * 1000)
        timer = f"s2s-{sid}-{act.attempt}"
        out.append(_timer(state, timer, "schedule_to_start", due, sid, act.attempt))
    return out


def _activity_emission(state: RunState, scheduled_id: int, act: OpenActivity) -> Emission:
    """The activity's task, or while it waits out a backoff, the timer that ends the wait."""
    if act.retry_at is None:
        return _activity_task(state, scheduled_id, act)
    timer = f"retry-{scheduled_id}-{act.attempt}"
    return _timer(state, timer, "retry", act.retry_at, scheduled_id, act.attempt)


def _timer(
    state: RunState,
    timer: str,
    kind: Any,
    due_ms: int,
    scheduled_id: int = 0,
    attempt: int = 0,
    *,
    once: bool = False,
) -> Emission:
    body = TimerFired(
        workflow_id=state.workflow_id,
        run_id=state.run_id,
        timer=timer,
        kind=kind,
        scheduled_id=scheduled_id,
        attempt=attempt,
        due=due_ms,
    )
    # The due time is part of the id: re-emitting the same timer dedupes, re-arming it
    # (a heartbeat pushing its deadline out) must not; a timer armed ``once`` never moves.
    msg_id = f"{state.run_id}:{timer}:" + ("armed" if once else str(due_ms))
    return Emission("timer", state.queue, msg_id, body, due_ms=due_ms)


def _activity_task(state: RunState, scheduled_id: int, act: OpenActivity) -> Emission:
    body = ActivityTask(
        workflow_id=state.workflow_id,
        run_id=state.run_id,
        workflow_type=state.workflow_type,
        workflow_queue=state.queue,
        scheduled_id=scheduled_id,
        seq=act.seq,
        name=act.name,
        input=act.input,
        attempt=act.attempt,
        start_to_close=act.start_to_close,
        schedule_to_start=act.schedule_to_start,
        heartbeat_timeout=act.heartbeat_timeout,
        heartbeat_details=act.heartbeat_details,
    )
    return Emission("act", act.queue, f"{state.run_id}:{scheduled_id}:{act.attempt}", body)
