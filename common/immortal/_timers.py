"""Durable timers: JetStream scheduled messages that fire back to the hub.

A timer is a message on ``imm.timer.<tenant>.<run>.<timer>`` carrying
``Nats-Schedule: @at <time>``; when due, the server publishes its body to the queue's
``imm.fired.<tenant>.<queue>`` subject in the same stream, where the hub consumes it. One
schedule per subject, so each timer has its own name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import overload

__all__ = ["rfc3339_ms", "schedule_headers", "seconds"]


@overload
def seconds(value: float | timedelta) -> float: ...
@overload
def seconds(value: float | timedelta | None) -> float | None: ...
def seconds(value: float | timedelta | None) -> float | None:
    """A duration given as seconds or a ``timedelta``, in seconds."""
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def rfc3339_ms(ms: int) -> str:
    """``2026-11-24T06:38:46.788Z``: the millisecond form ``@at`` accepts."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def schedule_headers(due_ms: int, target: str, msg_id: str) -> dict[str, str]:
    return {
        "Nats-Msg-Id": msg_id,
        "Nats-Schedule": f"@at {rfc3339_ms(due_ms)}",
        "Nats-Schedule-Target": target,
    }
