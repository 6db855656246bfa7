"""``handle.describe()``: where a run stands, from the snapshot on its newest history
message, with what it waits for: its pending activities and timers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from immortal._wire import OpenActivity, RunState, RunStatus

__all__ = ["PendingActivity", "PendingTimer", "RunDescription", "describe_run"]


@dataclass(frozen=True)
class PendingActivity:
    """An activity the run waits for.

    ``state`` is ``scheduled`` (no worker has it yet), ``running``, or ``backoff`` (its
    last attempt failed: the next starts at ``retry_at``). ``worker`` is the one running it
    now, as its registration says, else the last one the hub heard from about it;
    ``last_failure`` is the error of the attempt that failed last. ``heartbeat_age`` is the
    seconds since its last heartbeat reached the hub, as of the description.
    """

    activity_id: int  # its ActivityScheduled event
    name: str
    queue: str
    attempt: int
    state: str
    scheduled_at: datetime
    retry_at: datetime | None = None
    last_failure: str | None = None
    last_heartbeat_at: datetime | None = None
    heartbeat_age: float | None = None
    worker: str | None = None


@dataclass(frozen=True)
class PendingTimer:
    """A timer the run waits for: ``timer`` (``ctx.sleep``, a signal's or an await's
    timeout; ``timer_id`` is its TimerStarted event), or the run's ``execution_timeout`` or
    ``run_timeout``."""

    kind: str
    due_at: datetime
    timer_id: int | None = None


@dataclass(frozen=True)
class RunDescription:
    """Where a run stands, read from the snapshot on its newest history message."""

    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    status: RunStatus
    started_at: datetime
    closed_at: datetime | None
    history_length: int
    last_workflow_task_failure: str | None
    pending_activities: list[PendingActivity] = field(default_factory=list)
    pending_timers: list[PendingTimer] = field(default_factory=list)


def describe_run(state: RunState, running_on: dict[str, str], now_ms: int) -> RunDescription:
    """``running_on``: the live workers' running attempts, ``"<run>/<activity>/<attempt>"``
    to worker id."""
    is_open = not state.status.closed
    activities = [
        _activity(state.run_id, sid, act, running_on, now_ms)
        for sid, act in sorted(state.activities.items())
    ]
    return RunDescription(
        workflow_id=state.workflow_id,
        run_id=state.run_id,
        workflow_type=state.workflow_type,
        queue=state.queue,
        status=state.status,
        started_at=_ts(state.started_ts),
        closed_at=_ts(state.closed_ts) if state.closed_ts else None,
        history_length=state.next_event_id - 1,
        last_workflow_task_failure=state.last_wft_failure,
        pending_activities=activities if is_open else [],
        pending_timers=_timers(state) if is_open else [],
    )


def _activity(
    run_id: str, sid: int, act: OpenActivity, running_on: dict[str, str], now_ms: int
) -> PendingActivity:
    live = running_on.get(f"{run_id}/{sid}/{act.attempt}")
    if act.retry_at is not None:
        state = "backoff"
    elif live is not None or act.started:
        state = "running"
    else:
        state = "scheduled"
    failure = act.last_failure
    beat = act.last_heartbeat_ts or None
    return PendingActivity(
        activity_id=sid,
        name=act.name,
        queue=act.queue,
        attempt=act.attempt,
        state=state,
        scheduled_at=_ts(act.scheduled_ts),
        retry_at=_ts(act.retry_at) if act.retry_at is not None else None,
        last_failure=f"{failure.type}: {failure.message}" if failure is not None else None,
        last_heartbeat_at=_ts(beat) if beat else None,
        heartbeat_age=max(0.0, (now_ms - beat) / 1000) if beat else None,
        worker=live or act.worker,
    )


def _timers(state: RunState) -> list[PendingTimer]:
    timers = [
        PendingTimer(kind="timer", due_at=_ts(t.due), timer_id=tid)
        for tid, t in state.timers.items()
    ]
    for kind, seconds in (
        ("execution_timeout", state.execution_timeout),
        ("run_timeout", state.run_timeout),
    ):
        if seconds is not None:
            due = state.started_ts + round(seconds * 1000)
            timers.append(PendingTimer(kind=kind, due_at=_ts(due)))
    return sorted(timers, key=lambda t: t.due_at)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
