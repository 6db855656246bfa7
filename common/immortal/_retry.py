"""Retry policies: how often, and how long apart, a failed activity attempt is tried again.

The backoff math is ours and tiny: attempt ``n`` (1-based) that failed waits
``min(initial * coefficient ** (n - 1), maximum)`` seconds, scaled by a random factor in
``[1 - jitter, 1 + jitter]``. The hub draws the factor and records the resulting due time in
history, so replay never needs to redo it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from immortal._timers import seconds

__all__ = ["DEFAULT_RETRY_POLICY", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Per-activity retry policy (set at declaration, override per call).

    >>> @immortal.activity(retry=RetryPolicy(maximum_attempts=3, initial_interval=0.5))
    ... def charge(order_id: str) -> str: ...

    ``maximum_attempts=0`` means unlimited. Errors whose type name is listed in
    ``non_retryable_error_types``, and ``ApplicationError(..., non_retryable=True)``, are
    never retried.
    """

    initial_interval: float | timedelta = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | timedelta = 60.0
    maximum_attempts: int = 5
    jitter: float = 0.2
    non_retryable_error_types: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if seconds(self.initial_interval) < 0 or seconds(self.maximum_interval) < 0:
            raise ValueError("retry intervals must not be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")
        if self.maximum_attempts < 0:
            raise ValueError("maximum_attempts must be 0 (unlimited) or more")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def base_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt``, before jitter."""
        raw = seconds(self.initial_interval) * self.backoff_coefficient ** (attempt - 1)
        return min(raw, seconds(self.maximum_interval))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt``, jitter included."""
        factor = 1.0 + (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 1.0
        return self.base_delay(attempt) * factor

    def retries(self, attempt: int, error_type: str, non_retryable: bool) -> bool:
        """Whether failed attempt ``attempt`` with this error gets another attempt."""
        if non_retryable or error_type in self.non_retryable_error_types:
            return False
        return self.maximum_attempts == 0 or attempt < self.maximum_attempts

    def to_wire(self) -> dict[str, Any]:
        return {
            "initial": seconds(self.initial_interval),
            "coefficient": self.backoff_coefficient,
            "maximum": seconds(self.maximum_interval),
            "attempts": self.maximum_attempts,
            "jitter": self.jitter,
            "non_retryable": list(self.non_retryable_error_types),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any] | None) -> RetryPolicy:
        if not wire:
            return DEFAULT_RETRY_POLICY
        return cls(
            initial_interval=float(wire["initial"]),
            backoff_coefficient=float(wire["coefficient"]),
            maximum_interval=float(wire["maximum"]),
            maximum_attempts=int(wire["attempts"]),
            jitter=float(wire["jitter"]),
            non_retryable_error_types=tuple(wire.get("non_retryable", ())),
        )


DEFAULT_RETRY_POLICY = RetryPolicy()
