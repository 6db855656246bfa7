"""How ``immortal workflow describe`` prints a run: where it stands and what it waits for."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from immortal import PendingActivity, PendingTimer, RunDescription

__all__ = ["print_description"]


def print_description(desc: RunDescription, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(desc), indent=2, default=str))
        return
    status = str(desc.status)
    print(f"workflow {desc.workflow_id}  run {desc.run_id}")
    print(f"  type {desc.workflow_type} on queue {desc.queue}; {status}")
    print(f"  started {_when(desc.started_at)}", end="")
    if desc.closed_at is not None:
        took = (desc.closed_at - desc.started_at).total_seconds()
        print(f", closed {_when(desc.closed_at)} after {_span(took)}", end="")
    print(f"; {desc.history_length} events")
    if desc.last_workflow_task_failure:
        print(f"  last workflow task failure: {desc.last_workflow_task_failure}")
    print("pending activities:" + ("" if desc.pending_activities else " none"))
    for act in desc.pending_activities:
        print(f"  {_activity(act)}")
    print("pending timers:" + ("" if desc.pending_timers else " none"))
    for timer in desc.pending_timers:
        print(f"  {_timer(timer)}")


def _activity(act: PendingActivity) -> str:
    parts = [f"#{act.activity_id} {act.name} (queue {act.queue}) attempt {act.attempt}"]
    if act.state == "backoff" and act.retry_at is not None:
        parts.append(f"next attempt {_from_now(act.retry_at)}")
    else:
        parts.append(act.state)
    if act.worker:
        parts.append(("on " if act.state == "running" else "last on ") + act.worker)
    if act.heartbeat_age is not None:
        parts.append(f"last heartbeat {_span(act.heartbeat_age)} ago")
    if act.last_failure:
        parts.append(f"last failure: {act.last_failure}")
    return ", ".join(parts)


def _timer(timer: PendingTimer) -> str:
    name = f"#{timer.timer_id} timer" if timer.timer_id is not None else timer.kind
    return f"{name} due {_when(timer.due_at)} ({_from_now(timer.due_at)})"


def _from_now(at: datetime) -> str:
    left = at.timestamp() - time.time()
    return f"in {_span(left)}" if left >= 0 else f"{_span(-left)} overdue"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _when(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
