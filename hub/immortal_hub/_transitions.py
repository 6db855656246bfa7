"""The run state machine: pure functions from (state, input) to events and a new state.

Nothing here does I/O, so every rule is testable without a server and the hub stays a
thin loop around it: load state, apply, append, emit, ack.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from immortal._retry import RetryPolicy
from immortal._wire import (
    CLOSING_EVENTS,
    ActivityHeartbeat,
    ActivityResult,
    ActivityStarted,
    CancelActivity,
    CancelTimer,
    CancelWorkflow,
    ChildClosed,
    Command,
    CompleteWorkflow,
    ContinueAsNew,
    EventType,
    Failure,
    FailWorkflow,
    HistoryEvent,
    OpenActivity,
    OpenChild,
    OpenTimer,
    RecordMarker,
    RequestCancel,
    RequestTerminate,
    RunAhead,
    RunState,
    RunStatus,
    ScheduleActivity,
    SetStatus,
    SignalWorkflow,
    StartChild,
    StartTimer,
    StartWorkflow,
    TimerFired,
    WorkflowTaskResult,
)

__all__ = [
    "AwaitingStart",
    "InvalidInput",
    "Outcome",
    "StaleAttempt",
    "apply_activity_heartbeat",
    "apply_activity_result",
    "apply_activity_started",
    "apply_cancel_request",
    "apply_child_closed",
    "apply_signal",
    "apply_start",
    "apply_terminate",
    "apply_timer_fired",
    "apply_workflow_task_result",
    "input_id",
]

_APPLIED_KEPT = 64
# A run-ahead's time (the hub's clock as the worker reckons it) may lag the hub's clock by
# this much (the time its result took to arrive), and lead it by this much (clock drift).
_AHEAD_LAG_MS = 1000
_AHEAD_LEAD_MS = 50


class InvalidInput(Exception):
    """The input cannot apply to any run (it goes to the dead-letter subject)."""


class AwaitingStart(Exception):
    """An input for a run that does not exist yet, whose sender knows its start is durable
    (``pending_start``): it waits for the start, which is queued ahead of it."""


def _unknown_run(body: SignalWorkflow | RequestCancel | RequestTerminate, what: str) -> Exception:
    if body.pending_start:
        return AwaitingStart(f"{what} for run {body.run_id}, whose start is not applied yet")
    return InvalidInput(f"{what} for unknown run {body.run_id}")


class StaleAttempt(Exception):
    """A heartbeat from an attempt that no longer counts: its worker should stop."""


@dataclass
class Outcome:
    """What one input does to a run."""

    events: list[HistoryEvent] = field(default_factory=list)
    state: RunState | None = None
    duplicate: bool = False  # already applied: append nothing, re-emit what is open
    # An activity attempt began, confirmed as still counting (nothing to append): the hub
    # arms its start-to-close and heartbeat timers from its own clock. (scheduled id, time)
    confirmed: tuple[int, int] | None = None
    note: str | None = None  # why nothing happened, for the log
    # Appending nothing, the hub re-publishes what the run owes (an outage may have lost
    # it) unless the input's sender is known to hold it: a workflow task's repeated failure
    # comes from the worker that holds the task and hands it back itself.
    reemit: bool = True

    @property
    def closes_run(self) -> bool:
        return any(e.type in CLOSING_EVENTS for e in self.events)

    @property
    def starts(self) -> bool:
        return any(e.type is EventType.WORKFLOW_STARTED for e in self.events)


def _fork(state: RunState) -> RunState:
    """A copy of ``state`` to change, sharing what transitions only replace and never change
    in place (a deep copy was a tenth of the hub's CPU). The collections transitions add to
    or remove from are copied, and so are the open activities, which they change in place;
    the state given (the hub's cached one) stays as it was."""
    new = state.model_copy()
    new.activities = {sid: act.model_copy() for sid, act in state.activities.items()}
    new.timers = dict(state.timers)
    new.children = dict(state.children)
    return new


class _Builder:
    """Adds events stamped ``now``: the hub's clock, or for the events a worker ran ahead on
    the time the code saw, never earlier than the run's newest event (``RunState.last_ts``),
    so history time never goes backwards, whatever clock stamped what came before."""

    def __init__(self, state: RunState, now: int) -> None:
        self.state = state
        self.now = max(now, state.last_ts)
        self.events: list[HistoryEvent] = []

    def add(self, type_: EventType, caused_by: int | None = None, **attrs: Any) -> HistoryEvent:
        event = HistoryEvent(
            id=self.state.next_event_id, type=type_, ts=self.now, caused_by=caused_by, attrs=attrs
        )
        self.state.next_event_id += 1
        self.state.last_ts = self.now
        self.events.append(event)
        return event

    def schedule_workflow_task(self, caused_by: int) -> None:
        self.state.wft = self.add(EventType.WORKFLOW_TASK_SCHEDULED, caused_by).id

    def close(self, status: RunStatus) -> None:
        self.state.status = status
        self.state.closed_ts = self.now
        self.state.wft = None
        # Activities still out are abandoned: their late results will be recorded as ignored.
        # Open timers and children stay listed: the closing emissions purge and cancel them.
        self.state.activities = {}

    def news(self, event: HistoryEvent) -> None:
        """Workflow code has to see ``event``: schedule a workflow task unless one is open."""
        self.state.last_external = event.id
        if self.state.wft is None:
            self.schedule_workflow_task(event.id)

    def outcome(self, input_id: str) -> Outcome:
        applied = [*self.state.applied, input_id]
        self.state.applied = applied[-_APPLIED_KEPT:]
        return Outcome(events=self.events, state=self.state)


def input_id(body: Any) -> str:
    """The id an input is kept under in the run's ``applied`` ring once applied."""
    if isinstance(body, StartWorkflow):
        return body.run_id
    if isinstance(body, SignalWorkflow):
        return body.signal_id
    if isinstance(body, RequestCancel):
        return body.request_id
    if isinstance(body, ChildClosed):
        return f"child:{body.child_run_id}"
    if isinstance(body, TimerFired):
        return f"timer:{body.timer}"
    return str(body.result_id)  # results, starts of attempts, heartbeats


def apply_start(state: RunState | None, start: StartWorkflow, queue: str, now: int) -> Outcome:
    if state is not None:
        return Outcome(duplicate=True)
    new = RunState(
        workflow_id=start.workflow_id,
        run_id=start.run_id,
        workflow_type=start.workflow_type,
        queue=queue,
        started_ts=now,
        execution_timeout=start.execution_timeout,
        run_timeout=start.run_timeout,
        parent=start.parent,
        principal=start.acting_for,
    )
    b = _Builder(new, now)
    extra: dict[str, Any] = {}
    if start.parent is not None:
        extra["parent"] = start.parent.model_dump()
    if start.continued_from is not None:
        extra["continued_from"] = start.continued_from
    if start.schedule_id is not None:
        extra["schedule_id"] = start.schedule_id
    if start.by is not None:
        extra["by"] = start.by  # who started it (the hub sets it from the sender)
    if start.policy_input is not None:
        extra["policy_input"] = start.policy_input  # the worker checks them (_revealed)
    started = b.add(
        EventType.WORKFLOW_STARTED,
        workflow_type=start.workflow_type,
        queue=queue,
        input=start.input,
        **extra,
    )
    new.last_external = started.id
    if start.decision is not None:  # why the policy let it start (the hub decided)
        b.add(EventType.POLICY_DECISION, started.id, action="workflow.start", **start.decision)
    b.schedule_workflow_task(started.id)
    return b.outcome(start.run_id)


def apply_workflow_task_result(
    state: RunState | None, result: WorkflowTaskResult, now: int
) -> Outcome:
    if state is None:
        raise InvalidInput(f"workflow task result for unknown run {result.run_id}")
    if result.result_id in state.applied:
        return Outcome(duplicate=True)
    if state.status.closed:
        # Stale, so the worker drops the task instead of handing it back again.
        raise StaleAttempt(f"workflow task {result.wft} of a {state.status} run")
    if result.wft != state.wft:
        raise StaleAttempt(f"stale workflow task {result.wft} (open: {state.wft})")
    if result.through >= state.next_event_id:
        raise InvalidInput(f"workflow task claims to have seen event {result.through}")
    state = _fork(state)
    b = _Builder(state, now)
    if result.failure is not None:
        # The task stays open; the worker retries it. Repeats of one failure are not re-recorded.
        if state.last_wft_failure == result.failure.message:
            return Outcome(note="repeated workflow task failure", reemit=False)
        b.add(
            EventType.WORKFLOW_TASK_FAILED,
            result.wft,
            worker=result.worker,
            failure=result.failure.model_dump(exclude_defaults=True),
            **({"key_id": result.key_id} if result.key_id else {}),
        )
        state.last_wft_failure = result.failure.message
        return b.outcome(result.result_id)
    _complete_workflow_task(
        b, result.wft, result.through, result.worker, result.commands, key_id=result.key_id
    )
    return b.outcome(result.result_id)


def _complete_workflow_task(
    b: _Builder,
    wft: int,
    through: int,
    worker: str,
    commands: list[Command],
    *,
    key_id: str | None = None,
) -> None:
    state = b.state
    signed = {"key_id": key_id} if key_id else {}  # the key that signed the result
    done = b.add(EventType.WORKFLOW_TASK_COMPLETED, wft, through=through, worker=worker, **signed)
    state.wft = None
    state.last_wft_failure = None
    state.sticky = worker
    state.ran = True
    _apply_commands(b, done.id, commands)
    if not state.status.closed and state.last_external > through:
        b.schedule_workflow_task(done.id)  # news arrived while the worker was busy


def _apply_commands(b: _Builder, done_id: int, commands: list[Command]) -> None:
    """Each command the code issued becomes exactly one event (replay matches them 1:1)."""
    state = b.state
    for command in commands:
        if isinstance(command, ScheduleActivity):
            queue = command.queue or state.queue
            ev = b.add(
                EventType.ACTIVITY_SCHEDULED,
                done_id,
                seq=command.seq,
                name=command.name,
                queue=queue,
                input=command.input,
            )
            state.activities[ev.id] = OpenActivity(
                seq=command.seq,
                name=command.name,
                queue=queue,
                input=command.input,
                retry=command.retry,
                start_to_close=command.start_to_close,
                schedule_to_close=command.schedule_to_close,
                schedule_to_start=command.schedule_to_start,
                heartbeat_timeout=command.heartbeat_timeout,
                scheduled_ts=ev.ts,
            )
        elif isinstance(command, CancelActivity):
            sid = next((k for k, a in state.activities.items() if a.seq == command.seq), None)
            b.add(EventType.ACTIVITY_CANCELED, done_id, seq=command.seq, activity=sid)
            if sid is not None:
                del state.activities[sid]  # its next heartbeat is told to stop
        elif isinstance(command, StartTimer):
            due = b.now + command.duration_ms
            ev = b.add(
                EventType.TIMER_STARTED,
                done_id,
                seq=command.seq,
                duration_ms=command.duration_ms,
                due=due,
            )
            state.timers[ev.id] = OpenTimer(seq=command.seq, due=due)
        elif isinstance(command, CancelTimer):
            tid = next((k for k, t in state.timers.items() if t.seq == command.seq), None)
            b.add(EventType.TIMER_CANCELED, done_id, seq=command.seq, timer=tid)
            if tid is not None:
                del state.timers[tid]
        elif isinstance(command, StartChild):
            _start_child(b, done_id, command)
        elif isinstance(command, RecordMarker):
            b.add(EventType.MARKER_RECORDED, done_id, patch=command.patch)
        elif isinstance(command, SetStatus):
            b.add(EventType.STATUS_SET, done_id, value=command.value)
            state.status_value = command.value
        else:
            _close_by(b, done_id, command)
            return


def _close_by(
    b: _Builder,
    done_id: int,
    command: CompleteWorkflow | FailWorkflow | CancelWorkflow | ContinueAsNew,
) -> None:
    state = b.state
    if isinstance(command, CompleteWorkflow):
        b.add(EventType.WORKFLOW_COMPLETED, done_id, result=command.result)
        b.close(RunStatus.COMPLETED)
        state.close_payload = command.result
    elif isinstance(command, FailWorkflow):
        failure = command.failure.model_dump(exclude_defaults=True)
        b.add(EventType.WORKFLOW_FAILED, done_id, failure=failure)
        b.close(RunStatus.FAILED)
        state.close_failure = command.failure
    elif isinstance(command, CancelWorkflow):
        _cancelled(b, done_id, command.reason)
    else:
        new_run = uuid.uuid5(uuid.NAMESPACE_URL, f"immortal:{state.run_id}/continue").hex
        b.add(EventType.WORKFLOW_CONTINUED_AS_NEW, done_id, new_run_id=new_run, input=command.input)
        state.continued_run_id = new_run
        b.close(RunStatus.CONTINUED_AS_NEW)
        state.close_payload = command.input


def _start_child(b: _Builder, done_id: int, command: StartChild) -> None:
    state = b.state
    queue = command.queue or state.queue
    ev_id = state.next_event_id
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"immortal:{state.run_id}/child/{ev_id}").hex
    b.add(
        EventType.CHILD_WORKFLOW_SCHEDULED,
        done_id,
        seq=command.seq,
        workflow_type=command.workflow_type,
        workflow_id=command.workflow_id,
        run_id=run_id,
        queue=queue,
        input=command.input,
    )
    state.children[ev_id] = OpenChild(
        seq=command.seq,
        workflow_id=command.workflow_id,
        run_id=run_id,
        workflow_type=command.workflow_type,
        queue=queue,
        input=command.input,
        execution_timeout=command.execution_timeout,
    )


def apply_signal(state: RunState | None, signal: SignalWorkflow, now: int) -> Outcome:
    if state is None:
        raise _unknown_run(signal, f"signal {signal.name!r}")
    if signal.signal_id in state.applied:
        return Outcome(duplicate=True)
    if state.status.closed:
        raise InvalidInput(
            f"signal {signal.name!r} for run {signal.run_id}, which is {state.status}"
        )
    state = _fork(state)
    b = _Builder(state, now)
    ev = b.add(
        EventType.WORKFLOW_SIGNALED,
        None,
        name=signal.name,
        input=signal.input,
        signal_id=signal.signal_id,
        **({"by": signal.by} if signal.by is not None else {}),
    )
    b.news(ev)
    return b.outcome(signal.signal_id)


def apply_cancel_request(state: RunState | None, request: RequestCancel, now: int) -> Outcome:
    if state is None:
        raise _unknown_run(request, "cancellation")
    if request.request_id in state.applied:
        return Outcome(duplicate=True)
    if state.status.closed or state.cancel_requested:
        return Outcome(note="cancellation requested of a closed or already cancelling run")
    state = _fork(state)
    state.cancel_requested = True
    b = _Builder(state, now)
    by = {"by": request.by} if request.by is not None else {}  # who asked (set by the hub)
    asked = b.add(EventType.WORKFLOW_CANCEL_REQUESTED, None, reason=request.reason, **by)
    if not (state.ran or state.sticky):
        # No workflow task has completed: the code never ran, so it has nothing to clean
        # up (it issued no command yet) and perhaps no worker can ever run it (an unknown
        # type, a crash on its first task). The run closes now.
        _cancelled(b, asked.id, request.reason, before_code=True)
        return b.outcome(request.request_id)
    b.news(asked)
    return b.outcome(request.request_id)


def _cancelled(b: _Builder, caused_by: int, reason: str, **attrs: Any) -> None:
    b.add(EventType.WORKFLOW_CANCELED, caused_by, reason=reason, **attrs)
    b.close(RunStatus.CANCELED)
    message = "workflow cancelled" + (f": {reason}" if reason else "")
    b.state.close_failure = Failure(type="WorkflowCancelled", message=message)


def apply_terminate(state: RunState | None, request: RequestTerminate, now: int) -> Outcome:
    """Close the run at once, whatever its code is doing, without running it: timers are
    purged, children asked to cancel and the parent told, as for any close."""
    if state is None:
        raise _unknown_run(request, "termination")
    if request.request_id in state.applied:
        return Outcome(duplicate=True)
    if state.status.closed:
        return Outcome(note=f"termination requested of a {state.status} run")
    state = _fork(state)
    b = _Builder(state, now)
    by = {"by": request.by} if request.by is not None else {}
    b.add(EventType.WORKFLOW_TERMINATED, None, reason=request.reason, **by)
    b.close(RunStatus.TERMINATED)
    message = "workflow terminated" + (f": {request.reason}" if request.reason else "")
    state.close_failure = Failure(type="WorkflowTerminated", message=message)
    return b.outcome(request.request_id)


def apply_child_closed(state: RunState | None, closed: ChildClosed, now: int) -> Outcome:
    if state is None:
        raise InvalidInput(f"child result for unknown run {closed.run_id}")
    input_id = f"child:{closed.child_run_id}"
    if input_id in state.applied:
        return Outcome(duplicate=True)
    if state.status.closed or closed.scheduled_id not in state.children:
        return Outcome(note=f"child {closed.child_workflow_id} closed; the parent no longer waits")
    state = _fork(state)
    del state.children[closed.scheduled_id]
    b = _Builder(state, now)
    ids = {"workflow_id": closed.child_workflow_id, "run_id": closed.child_run_id}
    if closed.status == RunStatus.COMPLETED:
        ev = b.add(
            EventType.CHILD_WORKFLOW_COMPLETED, closed.scheduled_id, result=closed.result, **ids
        )
    else:
        failure = closed.failure or Failure(type="ChildWorkflowFailed", message=closed.status)
        ev = b.add(
            EventType.CHILD_WORKFLOW_FAILED,
            closed.scheduled_id,
            status=closed.status,
            failure=failure.model_dump(exclude_defaults=True),
            **ids,
        )
    b.news(ev)
    return b.outcome(input_id)


def apply_activity_result(state: RunState | None, result: ActivityResult, now: int) -> Outcome:
    if state is None:
        raise InvalidInput(f"activity result for unknown run {result.run_id}")
    if result.result_id in state.applied:
        return Outcome(duplicate=True)
    if state.status.closed:
        # Nothing is appended to a closed run, so that the newest message on a workflow's
        # history subjects is always its newest run's (``Client.get_handle`` relies on it).
        return Outcome(note=f"activity result for a closed run (attempt {result.attempt})")
    state = _fork(state)
    common = {
        "attempt": result.attempt,
        "delivery": result.delivery,
        "worker": result.worker,
        "started_ts": result.started_ts,
        "ended_ts": result.ended_ts,
        **({"key_id": result.key_id} if result.key_id else {}),  # who signed it
    }
    act = state.activities.get(result.scheduled_id)
    reason = None
    if act is None:
        reason = "activity already closed"
    elif act.attempt != result.attempt or act.retry_at is not None:
        reason = f"attempt {result.attempt} is no longer current (timed out or retried)"
    ahead = _ahead(state, result, now) if reason is None else None
    # The two events the worker ran ahead on carry the time its code saw (a replay then sees
    # the same); what follows them is stamped by the hub's clock, due times included.
    b = _Builder(state, now if ahead is None else ahead.ts)
    if reason is not None:
        b.add(EventType.ACTIVITY_RESULT_IGNORED, result.scheduled_id, reason=reason, **common)
        return b.outcome(result.result_id)
    if result.failure is not None:
        _fail_attempt(b, result.scheduled_id, result.failure, common)
        return b.outcome(result.result_id)
    ev = b.add(EventType.ACTIVITY_COMPLETED, result.scheduled_id, result=result.result, **common)
    _close_activity(b, result.scheduled_id, ev)
    if ahead is not None and state.wft == ahead.wft:  # the task it ran ahead is this one
        b.now = max(b.now, now)
        _complete_workflow_task(
            b, ahead.wft, ahead.wft, result.worker, ahead.commands, key_id=result.key_id
        )
    return b.outcome(result.result_id)


def _ahead(state: RunState, result: ActivityResult, now: int) -> RunAhead | None:
    """The workflow task the worker ran ahead with this result, if it is the one the hub
    schedules for it: the worker's copy of the run had every event (the next event id is
    the one it expected), no workflow task is open, and the time the code saw (the events
    get it) is not after the hub's clock, nor before the run's newest event, nor more than
    a second behind (a hub that slow records the result alone)."""
    ahead = result.then
    if ahead is None or result.failure is not None or state.wft is not None:
        return None
    if ahead.wft != state.next_event_id + 1 or ahead.ts < state.last_ts:
        return None
    if ahead.ts > now + _AHEAD_LEAD_MS or now - ahead.ts > _AHEAD_LAG_MS:
        return None
    return ahead


def _fail_attempt(
    b: _Builder, sid: int, failure: Failure, common: dict[str, Any], *, backoff: bool = True
) -> None:
    """Retry the activity by its policy (after a durable backoff), or fail it for good."""
    act = b.state.activities[sid]
    policy = RetryPolicy.from_wire(act.retry)
    wire = failure.model_dump(exclude_defaults=True)
    retries = policy.retries(act.attempt, failure.type, failure.non_retryable)
    non_retryable = failure.non_retryable or failure.type in policy.non_retryable_error_types
    reason = "non-retryable error" if non_retryable else f"{act.attempt} attempts used"
    if retries:
        backoff_ms = round(policy.delay(act.attempt) * 1000) if backoff else 0
        deadline = None
        if act.schedule_to_close is not None:
            deadline = _scheduled_ts(b.state, act) + round(act.schedule_to_close * 1000)
        if deadline is None or b.now + backoff_ms < deadline:
            act.attempt += 1
            act.started = False
            act.retry_at = b.now + backoff_ms
            # For `describe`: what went wrong last (no traceback: the snapshot rides on
            # every transition while the activity is open; the event has it all).
            act.last_failure = Failure(type=failure.type, message=failure.message[:500])
            act.worker = common.get("worker") or act.worker
            b.add(
                EventType.ACTIVITY_ATTEMPT_FAILED,
                sid,
                failure=wire,
                next_attempt=act.attempt,
                backoff_ms=backoff_ms,
                retry_at=act.retry_at,
                **common,
            )
            return
        reason = "no time left before the schedule-to-close deadline"
    if failure.type == "ScheduleToCloseTimeout":
        reason = "schedule-to-close timeout"
    ev = b.add(EventType.ACTIVITY_FAILED, sid, failure=wire, reason=reason, **common)
    _close_activity(b, sid, ev)


def _close_activity(b: _Builder, sid: int, ev: HistoryEvent) -> None:
    del b.state.activities[sid]
    b.news(ev)


def _scheduled_ts(state: RunState, act: OpenActivity) -> int:
    return act.scheduled_ts or state.started_ts


def apply_timer_fired(state: RunState | None, fired: TimerFired, now: int) -> Outcome:
    """A durable timer came due: a retry backoff ended, or a timeout ran out."""
    if state is None:
        raise InvalidInput(f"timer {fired.timer} for unknown run {fired.run_id}")
    input_id = f"timer:{fired.timer}"
    if input_id in state.applied:
        return Outcome(duplicate=True)
    stale = Outcome(note=f"timer {fired.timer} no longer needed")
    if state.status.closed:
        return stale
    state = _fork(state)
    b = _Builder(state, now)
    if fired.kind in ("execution_timeout", "run_timeout"):
        if fired.kind == "execution_timeout":
            after, kind = state.execution_timeout, "WorkflowTimeout"
        else:
            after, kind = state.run_timeout, "WorkflowRunTimeout"
        failure = Failure(type=kind, message=f"{fired.kind.replace('_', ' ')} of {after:g}s")
        b.add(EventType.WORKFLOW_FAILED, None, failure=failure.model_dump(exclude_defaults=True))
        b.close(RunStatus.FAILED)
        state.close_failure = failure
        return b.outcome(input_id)
    if fired.kind == "timer":
        timer = state.timers.pop(fired.scheduled_id, None)
        if timer is None:
            return stale
        ev = b.add(
            EventType.TIMER_FIRED, fired.scheduled_id, due=timer.due, late_ms=now - timer.due
        )
        b.news(ev)
        return b.outcome(input_id)
    act = state.activities.get(fired.scheduled_id)
    if act is None:
        return stale
    if fired.kind == "schedule_to_close":
        message = f"activity {act.name!r} did not finish within {act.schedule_to_close:g}s"
        failure = Failure(type="ScheduleToCloseTimeout", message=message, non_retryable=True)
        _fail_attempt(b, fired.scheduled_id, failure, {"attempt": act.attempt})
        return b.outcome(input_id)
    if act.attempt != fired.attempt or not _attempt_timer(b, act, fired):
        return stale
    return b.outcome(input_id)


def _attempt_timer(b: _Builder, act: OpenActivity, fired: TimerFired) -> bool:
    """Apply a timer that concerns the current attempt; False if it changes nothing."""
    sid, now = fired.scheduled_id, b.now
    if fired.kind == "retry":
        if act.retry_at is None:
            return False
        b.add(
            EventType.ACTIVITY_ATTEMPT_SCHEDULED,
            sid,
            attempt=act.attempt,
            due=act.retry_at,
            late_ms=now - act.retry_at,
        )
        act.retry_at = None
        return True
    if act.retry_at is not None:
        return False  # the attempt already failed; its next one waits for its backoff
    if fired.kind == "schedule_to_start" and not act.started:
        message = f"no worker started attempt {act.attempt} within {act.schedule_to_start:g}s"
        failure = Failure(type="ScheduleToStartTimeout", message=message)
    elif fired.kind == "heartbeat_timeout":
        timeout_ms = round((act.heartbeat_timeout or 0) * 1000)
        if act.last_heartbeat_ts and now < act.last_heartbeat_ts + timeout_ms:
            return False  # a heartbeat re-armed it while this firing was on its way
        message = f"attempt {act.attempt} sent no heartbeat for {act.heartbeat_timeout:g}s"
        failure = Failure(type="HeartbeatTimeout", message=message)
    elif fired.kind == "start_to_close":
        message = f"attempt {act.attempt} did not finish within {act.start_to_close:g}s"
        failure = Failure(type="StartToCloseTimeout", message=message)
    else:
        return False
    _fail_attempt(b, sid, failure, {"attempt": act.attempt})
    return True


def apply_activity_heartbeat(state: RunState | None, beat: ActivityHeartbeat, now: int) -> Outcome:
    """Record progress and push the heartbeat deadline out; refuse a stale attempt."""
    if state is None:
        raise InvalidInput(f"heartbeat for unknown run {beat.run_id}")
    if beat.result_id in state.applied:
        return Outcome(duplicate=True)
    act = state.activities.get(beat.scheduled_id)
    if state.status.closed or act is None or act.attempt != beat.attempt or act.retry_at:
        raise StaleAttempt(f"attempt {beat.attempt} no longer counts (timed out or closed)")
    state = _fork(state)
    act = state.activities[beat.scheduled_id]
    act.heartbeat_details = beat.details
    act.last_heartbeat_ts = now
    act.worker = beat.worker
    b = _Builder(state, now)
    b.add(
        EventType.ACTIVITY_HEARTBEAT,
        beat.scheduled_id,
        attempt=beat.attempt,
        worker=beat.worker,
        details=beat.details,
    )
    return b.outcome(beat.result_id)


def apply_activity_started(state: RunState | None, started: ActivityStarted, now: int) -> Outcome:
    """A worker is about to run an attempt, and asks whether it still counts (every
    delivery, before any user code runs): a delivery of an attempt that no longer counts is
    refused (``StaleAttempt``). An attempt that counts is confirmed (and its start recorded
    when it has a schedule-to-start timeout, which that disarms).

    A redelivered task (delivery 2 or later) means an earlier delivery of the same attempt
    ended without a result: its worker died, froze past its lease, or stopped before
    finishing. That attempt is lost and counts against the retry policy, as a timed-out
    attempt would, so an activity that crashes every worker that runs it (a poison
    activity) exhausts its attempts and fails instead of crashing workers forever. The next
    attempt is due at once: noticing the loss already took the worker's liveness TTL or
    its lease, which paces a crash loop.
    """
    if state is None:
        raise InvalidInput(f"activity start for unknown run {started.run_id}")
    if started.result_id in state.applied:
        return Outcome(duplicate=True)
    act = state.activities.get(started.scheduled_id)
    current = (
        not state.status.closed
        and act is not None
        and act.attempt == started.attempt
        and act.retry_at is None
    )
    if current and started.delivery > 1:
        state = _fork(state)
        b = _Builder(state, now)
        lost = Failure(
            type="WorkerLost",
            message=(
                f"attempt {started.attempt} was lost: delivery {started.delivery - 1} ended "
                "without a result (its worker died, froze past its lease, or stopped)"
            ),
        )
        common = {"attempt": started.attempt, "delivery": started.delivery - 1}
        _fail_attempt(b, started.scheduled_id, lost, common, backoff=False)
        return b.outcome(started.result_id)
    if not current or act is None:
        # A delivery of an attempt that already ended (lost, timed out, or its run closed):
        # it must not run, or a task that crashes its worker would be redelivered forever.
        raise StaleAttempt(f"attempt {started.attempt} no longer counts")
    if act.schedule_to_start is None or act.started:
        # The attempt counts: the worker runs it. Only a schedule-to-start timeout needs the
        # start recorded; the attempt's own timers are armed now, on the hub's clock.
        return Outcome(confirmed=(started.scheduled_id, now))
    state = _fork(state)
    state.activities[started.scheduled_id].started = True
    state.activities[started.scheduled_id].worker = started.worker
    b = _Builder(state, now)
    b.add(
        EventType.ACTIVITY_ATTEMPT_STARTED,
        started.scheduled_id,
        attempt=started.attempt,
        delivery=started.delivery,
        worker=started.worker,
    )
    return b.outcome(started.result_id)
