"""``@workflow`` and ``@activity``: check the target when applied, attach a frozen definition.

Registration is explicit (``Worker(workflows=[...], activities=[...])``); there is no
global registry.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from immortal._activity import ActivityInfo, current_activity, current_heartbeats
from immortal._logs import ActivityLogger
from immortal._retry import RetryPolicy
from immortal._timers import seconds

__all__ = [
    "ActivityDefinition",
    "ActivityOptions",
    "WorkflowDefinition",
    "activity_definition",
    "workflow_definition",
]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_WF_ATTR = "__immortal_workflow__"
_ACT_ATTR = "__immortal_activity__"


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    fn: Callable[..., Awaitable[Any]]
    arg_types: tuple[Any, ...]
    return_type: Any


@dataclass(frozen=True)
class ActivityOptions:
    """How an activity is scheduled: set at declaration, overridden per call.

    ``start_to_close`` bounds one attempt (a timed-out attempt is retried by policy);
    ``schedule_to_close`` bounds all attempts together.
    """

    queue: str | None = None
    retry: RetryPolicy | None = None
    start_to_close: float | timedelta | None = None
    schedule_to_close: float | timedelta | None = None
    schedule_to_start: float | timedelta | None = None
    heartbeat_timeout: float | timedelta | None = None

    def merged(self, override: ActivityOptions) -> ActivityOptions:
        return ActivityOptions(
            queue=override.queue or self.queue,
            retry=override.retry or self.retry,
            start_to_close=override.start_to_close or self.start_to_close,
            schedule_to_close=override.schedule_to_close or self.schedule_to_close,
            schedule_to_start=override.schedule_to_start or self.schedule_to_start,
            heartbeat_timeout=override.heartbeat_timeout or self.heartbeat_timeout,
        )

    @property
    def start_to_close_s(self) -> float | None:
        return seconds(self.start_to_close)

    @property
    def schedule_to_close_s(self) -> float | None:
        return seconds(self.schedule_to_close)

    @property
    def schedule_to_start_s(self) -> float | None:
        return seconds(self.schedule_to_start)

    @property
    def heartbeat_timeout_s(self) -> float | None:
        return seconds(self.heartbeat_timeout)


@dataclass(frozen=True)
class ActivityDefinition:
    name: str
    fn: Callable[..., Any]
    is_async: bool
    arg_types: tuple[Any, ...]
    return_type: Any
    options: ActivityOptions = ActivityOptions()


def _hints(fn: Callable[..., Any], skip: int) -> tuple[tuple[Any, ...], Any]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward refs: fall back to untyped decoding
        hints = {}
    params = list(inspect.signature(fn).parameters.values())[skip:]
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(
                f"{fn.__qualname__}: keyword-only and **kwargs parameters are not supported"
            )
    args = tuple(hints.get(p.name, Any) for p in params if p.kind != p.VAR_POSITIONAL)
    return args, hints.get("return", Any)


def _make_workflow(fn: F, name: str | None) -> F:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@workflow needs an async def, got {fn!r}")
    if not inspect.signature(fn).parameters:
        raise TypeError(f"@workflow {fn.__qualname__} must take ctx: WorkflowContext first")
    args, ret = _hints(fn, skip=1)
    setattr(fn, _WF_ATTR, WorkflowDefinition(name or fn.__name__, fn, args, ret))
    return fn


def _make_activity(fn: F, name: str | None, options: ActivityOptions) -> F:
    if not callable(fn):
        raise TypeError(f"@activity needs a function, got {fn!r}")
    args, ret = _hints(fn, skip=0)
    defn = ActivityDefinition(
        name or fn.__name__, fn, inspect.iscoroutinefunction(fn), args, ret, options
    )
    setattr(fn, _ACT_ATTR, defn)
    return fn


class WorkflowDecorator:
    """``@immortal.workflow`` or ``@immortal.workflow(name="orders.place")``."""

    @overload
    def __call__(self, fn: F, /) -> F: ...
    @overload
    def __call__(self, fn: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...
    def __call__(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
        if fn is not None:
            return _make_workflow(fn, name)
        return lambda f: _make_workflow(f, name)


class ActivityDecorator:
    """``@immortal.activity`` or ``@immortal.activity(name=..., queue=...)``.

    Works on ``async def`` (run on the worker's event loop) and plain functions (run in
    a thread so they cannot block it).
    """

    @overload
    def __call__(self, fn: F, /) -> F: ...
    @overload
    def __call__(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        schedule_to_start: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
    ) -> Callable[[F], F]: ...
    def __call__(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        schedule_to_start: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
    ) -> Any:
        options = ActivityOptions(
            queue, retry, start_to_close, schedule_to_close, schedule_to_start, heartbeat_timeout
        )
        if fn is not None:
            return _make_activity(fn, name, options)
        return lambda f: _make_activity(f, name, options)

    @staticmethod
    def heartbeat(details: Any = None) -> None:
        """Report progress; ``details`` (any encodable value) reach the next attempt.

        With a ``heartbeat_timeout``, an attempt that stops heartbeating for that long is
        timed out and retried. Raises :class:`ActivityCancelledError` once the attempt no
        longer counts; sync activities should let it propagate.
        """
        beats = current_heartbeats.get()
        if beats is None:
            raise RuntimeError("immortal.activity.heartbeat() called outside an activity")
        beats.beat(details)

    @property
    def logger(self) -> ActivityLogger:
        """Standard logging for activity code; each line is stored in IMM_LOGS with the
        run, the activity and the attempt (``immortal logs ID`` shows it).

        >>> immortal.activity.logger.info("charging %s", order.id, extra={"cents": 500})
        """
        return _ACTIVITY_LOGGER

    @staticmethod
    def info() -> ActivityInfo:
        """The running activity's identity, attempt and idempotency key."""
        current = current_activity.get()
        if current is None:
            raise RuntimeError("immortal.activity.info() called outside an activity")
        return current


_ACTIVITY_LOGGER = ActivityLogger()


def workflow_definition(obj: Any) -> WorkflowDefinition:
    defn = getattr(obj, _WF_ATTR, None)
    if not isinstance(defn, WorkflowDefinition):
        raise TypeError(f"{obj!r} is not decorated with @immortal.workflow")
    return defn


def activity_definition(obj: Any) -> ActivityDefinition:
    defn = getattr(obj, _ACT_ATTR, None)
    if not isinstance(defn, ActivityDefinition):
        raise TypeError(f"{obj!r} is not decorated with @immortal.activity")
    return defn
