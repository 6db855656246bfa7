"""What running activity code can ask about itself: ``immortal.activity.info()``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ActivityInfo", "current_activity"]


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

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this activity: hand it to external APIs.

        >>> stripe.Charge.create(..., idempotency_key=immortal.activity.info().idempotency_key)
        """
        return f"{self.tenant}/{self.workflow_id}/{self.run_id}/{self.activity_id}"


current_activity: ContextVar[ActivityInfo | None] = ContextVar("immortal_activity", default=None)
