"""What running activity code can ask about itself: ``immortal.activity.info()``."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from immortal._errors import ActivityCancelledError

__all__ = ["ActivityInfo", "Heartbeats", "current_activity", "current_heartbeats"]


@dataclass(frozen=True)
class ActivityInfo:
    tenant: str
    workflow_id: str
    run_id: str
    workflow_type: str
    activity_id: int  # the ActivityScheduled event id: stable across retries
    name: str
    attempt: int
    worker: str
    heartbeat_details: Any = None  # the last details an earlier attempt heartbeated

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this activity: hand it to external APIs.

        >>> stripe.Charge.create(..., idempotency_key=immortal.activity.info().idempotency_key)
        """
        return f"{self.tenant}/{self.workflow_id}/{self.run_id}/{self.activity_id}"


current_activity: ContextVar[ActivityInfo | None] = ContextVar("immortal_activity", default=None)


@dataclass
class Heartbeats:
    """The running attempt's heartbeat state; thread-safe, since sync activities run in threads."""

    details: Any = None
    beats: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def beat(self, details: Any) -> None:
        if self.cancelled.is_set():
            raise ActivityCancelledError(self.reason or "the attempt was cancelled")
        if details is not None:
            self.details = details
        self.beats += 1


current_heartbeats: ContextVar[Heartbeats | None] = ContextVar("immortal_heartbeats", default=None)
