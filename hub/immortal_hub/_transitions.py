"""The run state machine: pure functions from (state, input) to events and a new state.

Nothing here does I/O, so every rule is testable without a server and the hub stays a
thin loop around it: load state, apply, append, emit, ack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from immortal._names import TaskKind
from immortal._retry import RetryPolicy
from immortal._wire import (
    ActivityHeartbeat,
    ActivityResult,
    ActivityStarted,
    ActivityTask,
    Command,
    CompleteWorkflow,
    EventType,
    Failure,
    FailWorkflow,
    HistoryEvent,
    OpenActivity,
    RunState,
    RunStatus,
    ScheduleActivity,
    StartWorkflow,
    TimerFired,
    WorkflowTask,
    WorkflowTaskResult,
)

__all__ = [
    "Emission",
    "InvalidInput",
    "Outcome",
    "StaleAttempt",
    "apply_activity_heartbeat",
    "apply_activity_result",
    "apply_activity_started",
    "apply_start",
    "apply_timer_fired",
    "apply_workflow_task_result",
    "emissions_for",
    "open_emissions",
]

_APPLIED_KEPT = 64


class InvalidInput(Exception):
    """The input cannot apply to any run (it goes to the dead-letter subject)."""


class StaleAttempt(Exception):
    """A heartbeat from an attempt that no longer counts: its worker should stop."""


@dataclass
class Outcome:
    """What one input does to a run."""

    events: list[HistoryEvent] = field(default_factory=list)
    state: RunState | None = None
    duplicate: bool = False  # already applied: append nothing, re-emit what is open
    note: str | None = None  # why nothing happened, for the log

    @property
    def closes_run(self) -> bool:
        return any(
            e.type in (EventType.WORKFLOW_COMPLETED, EventType.WORKFLOW_FAILED) for e in self.events
        )

    @property
    def starts_run(self) -> bool:
        return any(e.type is EventType.WORKFLOW_STARTED for e in self.events)


@dataclass(frozen=True)
class Emission:
    """A task (``wf``, ``act``) or a durable timer (``timer``) to publish.

    ``msg_id`` dedupes re-emission; a timer fires at ``due_ms`` onto the queue's fired subject.
    """

    kind: TaskKind | Literal["timer"]
    queue: str
    msg_id: str
    body: WorkflowTask | ActivityTask | TimerFired
    due_ms: int | None = None


class _Builder:
    def __init__(self, state: RunState, now: int) -> None:
        self.state = state
        self.now = now
        self.events: list[HistoryEvent] = []

    def add(self, type_: EventType, caused_by: int | None = None, **attrs: Any) -> HistoryEvent:
        event = HistoryEvent(
            id=self.state.next_event_id, type=type_, ts=self.now, caused_by=caused_by, attrs=attrs
        )
        self.state.next_event_id += 1
        self.events.append(event)
        return event

    def schedule_workflow_task(self, caused_by: int) -> None:
        self.state.wft = self.add(EventType.WORKFLOW_TASK_SCHEDULED, caused_by).id

    def close(self, status: RunStatus) -> None:
        self.state.status = status
        self.state.closed_ts = self.now
        self.state.wft = None
        # Activities still out are abandoned: their late results will be recorded as ignored.
        self.state.activities = {}

    def outcome(self, input_id: str) -> Outcome:
        applied = [*self.state.applied, input_id]
        self.state.applied = applied[-_APPLIED_KEPT:]
        return Outcome(events=self.events, state=self.state)


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
    )
    b = _Builder(new, now)
    started = b.add(
        EventType.WORKFLOW_STARTED,
        workflow_type=start.workflow_type,
        queue=queue,
        input=start.input,
    )
    new.last_external = started.id
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
        return Outcome(note="workflow task result for a closed run")
    if result.wft != state.wft:
        return Outcome(note=f"stale workflow task {result.wft} (open: {state.wft})")
    if result.through >= state.next_event_id:
        raise InvalidInput(f"workflow task claims to have seen event {result.through}")
    state = state.model_copy(deep=True)
    b = _Builder(state, now)
    if result.failure is not None:
        # The task stays open; the worker retries it. Repeats of one failure are not re-recorded.
        if state.last_wft_failure == result.failure.message:
            return Outcome(note="repeated workflow task failure")
        b.add(
            EventType.WORKFLOW_TASK_FAILED,
            result.wft,
            worker=result.worker,
            failure=result.failure.model_dump(exclude_defaults=True),
        )
        state.last_wft_failure = result.failure.message
        return b.outcome(result.result_id)
    done = b.add(
        EventType.WORKFLOW_TASK_COMPLETED, result.wft, through=result.through, worker=result.worker
    )
    state.wft = None
    state.last_wft_failure = None
    _apply_commands(b, done.id, result.commands)
    if not state.status.closed and state.last_external > result.through:
        b.schedule_workflow_task(done.id)  # news arrived while the worker was busy
    return b.outcome(result.result_id)


def _apply_commands(b: _Builder, done_id: int, commands: list[Command]) -> None:
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
        elif isinstance(command, CompleteWorkflow):
            b.add(EventType.WORKFLOW_COMPLETED, done_id, result=command.result)
            b.close(RunStatus.COMPLETED)
            return
        elif isinstance(command, FailWorkflow):
            failure = command.failure.model_dump(exclude_defaults=True)
            b.add(EventType.WORKFLOW_FAILED, done_id, failure=failure)
            b.close(RunStatus.FAILED)
            return


def apply_activity_result(state: RunState | None, result: ActivityResult, now: int) -> Outcome:
    if state is None:
        raise InvalidInput(f"activity result for unknown run {result.run_id}")
    if result.result_id in state.applied:
        return Outcome(duplicate=True)
    state = state.model_copy(deep=True)
    b = _Builder(state, now)
    common = {
        "attempt": result.attempt,
        "delivery": result.delivery,
        "worker": result.worker,
        "started_ts": result.started_ts,
        "ended_ts": result.ended_ts,
    }
    act = state.activities.get(result.scheduled_id)
    reason = None
    if state.status.closed:
        reason = "run already closed"
    elif act is None:
        reason = "activity already closed"
    elif act.attempt != result.attempt or act.retry_at is not None:
        reason = f"attempt {result.attempt} is no longer current (timed out or retried)"
    if reason is not None:
        b.add(EventType.ACTIVITY_RESULT_IGNORED, result.scheduled_id, reason=reason, **common)
        return b.outcome(result.result_id)
    if result.failure is not None:
        _fail_attempt(b, result.scheduled_id, result.failure, common)
        return b.outcome(result.result_id)
    ev = b.add(EventType.ACTIVITY_COMPLETED, result.scheduled_id, result=result.result, **common)
    _close_activity(b, result.scheduled_id, ev)
    return b.outcome(result.result_id)


def _fail_attempt(b: _Builder, sid: int, failure: Failure, common: dict[str, Any]) -> None:
    """Retry the activity by its policy (after a durable backoff), or fail it for good."""
    act = b.state.activities[sid]
    policy = RetryPolicy.from_wire(act.retry)
    wire = failure.model_dump(exclude_defaults=True)
    retries = policy.retries(act.attempt, failure.type, failure.non_retryable)
    non_retryable = failure.non_retryable or failure.type in policy.non_retryable_error_types
    reason = "non-retryable error" if non_retryable else f"{act.attempt} attempts used"
    if retries:
        backoff_ms = round(policy.delay(act.attempt) * 1000)
        deadline = None
        if act.schedule_to_close is not None:
            deadline = _scheduled_ts(b.state, act) + round(act.schedule_to_close * 1000)
        if deadline is None or b.now + backoff_ms < deadline:
            act.attempt += 1
            act.started = False
            act.retry_at = b.now + backoff_ms
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
    b.state.last_external = ev.id
    if b.state.wft is None:
        b.schedule_workflow_task(ev.id)


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
    state = state.model_copy(deep=True)
    b = _Builder(state, now)
    if fired.kind in ("execution_timeout", "run_timeout"):
        if fired.kind == "execution_timeout":
            after, kind = state.execution_timeout, "WorkflowTimeout"
        else:
            after, kind = state.run_timeout, "WorkflowRunTimeout"
        failure = Failure(type=kind, message=f"{fired.kind.replace('_', ' ')} of {after:g}s")
        b.add(EventType.WORKFLOW_FAILED, None, failure=failure.model_dump(exclude_defaults=True))
        b.close(RunStatus.FAILED)
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
    state = state.model_copy(deep=True)
    act = state.activities[beat.scheduled_id]
    act.heartbeat_details = beat.details
    act.last_heartbeat_ts = now
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
    """Recorded only for activities with a schedule-to-start timeout, which it disarms."""
    if state is None:
        raise InvalidInput(f"activity start for unknown run {started.run_id}")
    if started.result_id in state.applied:
        return Outcome(duplicate=True)
    act = state.activities.get(started.scheduled_id)
    if state.status.closed or act is None or act.attempt != started.attempt or act.started:
        return Outcome(note=f"start of attempt {started.attempt} is not news")
    state = state.model_copy(deep=True)
    state.activities[started.scheduled_id].started = True
    b = _Builder(state, now)
    b.add(
        EventType.ACTIVITY_ATTEMPT_STARTED,
        started.scheduled_id,
        attempt=started.attempt,
        delivery=started.delivery,
        worker=started.worker,
    )
    return b.outcome(started.result_id)


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
        elif ev.type is EventType.ACTIVITY_SCHEDULED and ev.id in state.activities:
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
                out.append(
                    _timer(state, timer, "heartbeat_timeout", due, ev.caused_by, act.attempt)
                )
        elif ev.type is EventType.WORKFLOW_STARTED:
            for kind, seconds in (
                ("execution_timeout", state.execution_timeout),
                ("run_timeout", state.run_timeout),
            ):
                if seconds is not None:
                    due = ev.ts + round(seconds * 1000)
                    out.append(_timer(state, kind.replace("_", "-"), kind, due))
        elif ev.type in _RETRY_EVENTS and ev.caused_by in state.activities:
            act = state.activities[ev.caused_by]
            if act.retry_at is None:
                out.extend(_dispatch(state, ev.caused_by, act, ev.ts))
            else:
                out.append(_activity_emission(state, ev.caused_by, act))
    return out


_RETRY_EVENTS = (EventType.ACTIVITY_ATTEMPT_FAILED, EventType.ACTIVITY_ATTEMPT_SCHEDULED)


def open_emissions(state: RunState, hist_seq: int) -> list[Emission]:
    """Every task the run has outstanding: re-emitted (deduped by id) after a hub crash."""
    out = [_activity_emission(state, sid, act) for sid, act in state.activities.items()]
    if state.wft is not None:
        out.append(_workflow_task(state, state.wft, hist_seq))
    return out


def _workflow_task(state: RunState, wft: int, hist_seq: int) -> Emission:
    body = WorkflowTask(
        workflow_id=state.workflow_id,
        run_id=state.run_id,
        workflow_type=state.workflow_type,
        queue=state.queue,
        wft=wft,
        hist_seq=hist_seq,
    )
    return Emission("wf", state.queue, f"{state.run_id}:{wft}", body)


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
) -> Emission:
    body = TimerFired(
        workflow_id=state.workflow_id,
        run_id=state.run_id,
        timer=timer,
        kind=kind,
        scheduled_id=scheduled_id,
        attempt=attempt,
    )
    # The due time is part of the id: re-emitting the same timer dedupes, re-arming it
    # (a heartbeat pushing its deadline out) must not.
    msg_id = f"{state.run_id}:{timer}:{due_ms}"
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
