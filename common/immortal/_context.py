"""``WorkflowContext``: the API workflow code sees.

It calls an abstract :class:`WorkflowRuntime` that the worker implements, so declaring a
workflow never imports the worker.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

from immortal._codec import decode_value, encode_args
from immortal._definitions import ActivityOptions, activity_definition
from immortal._retry import RetryPolicy

__all__ = ["WorkflowContext", "WorkflowInfo", "WorkflowRuntime"]

R = TypeVar("R")


@dataclass(frozen=True)
class WorkflowInfo:
    tenant: str
    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str


class WorkflowRuntime(abc.ABC):
    """What the worker provides to a running workflow."""

    @abc.abstractmethod
    def schedule_activity(
        self, name: str, payload: bytes, options: ActivityOptions
    ) -> asyncio.Future[bytes]:
        """Issue a schedule-activity command; the future resolves with its encoded result."""

    @abc.abstractmethod
    def now_ms(self) -> int:
        """Deterministic time: the time of the newest event the code has seen."""

    @abc.abstractmethod
    def is_replaying(self) -> bool: ...


class _WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that stays quiet while the workflow replays, so each line is logged once."""

    def __init__(self, logger: logging.Logger, runtime: WorkflowRuntime, extra: dict[str, Any]):
        super().__init__(logger, extra)
        self._runtime = runtime

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._runtime.is_replaying():
            super().log(level, msg, *args, **kwargs)


class WorkflowContext:
    """Passed as the first argument to every workflow function."""

    def __init__(self, info: WorkflowInfo, runtime: WorkflowRuntime) -> None:
        self.info = info
        self._runtime = runtime
        self._random = random.Random(f"{info.workflow_id}/{info.run_id}")
        base = logging.getLogger(f"immortal.workflow.{info.workflow_type}")
        self.log = _WorkflowLogger(
            base, runtime, {"workflow_id": info.workflow_id, "run_id": info.run_id}
        )

    @overload
    async def activity(
        self,
        fn: Callable[..., R],
        *args: Any,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        schedule_to_start: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
    ) -> R: ...
    @overload
    async def activity(
        self,
        fn: str,
        *args: Any,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        schedule_to_start: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        result_type: type[R],
    ) -> R: ...
    @overload
    async def activity(
        self,
        fn: str,
        *args: Any,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        schedule_to_start: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
    ) -> Any: ...
    async def activity(
        self,
        fn: Any,
        *args: Any,
        queue: str | None = None,
        retry: RetryPolicy | None = None,
        start_to_close: float | timedelta | None = None,
        schedule_to_close: float | timedelta | None = None,
        schedule_to_start: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        result_type: Any = None,
    ) -> Any:
        """Run an activity and return its result (durably, exactly once in history).

        Options given here override the activity's declared ones for this call. If the
        activity fails for good (its retry policy used up, a non-retryable error, or a
        timeout), an :class:`ActivityError` carrying the last error is raised here.

        >>> receipt = await ctx.activity(charge, order.id, order.cents, start_to_close=30)
        """
        call = ActivityOptions(
            queue, retry, start_to_close, schedule_to_close, schedule_to_start, heartbeat_timeout
        )
        if isinstance(fn, str):
            name, hint, options = fn, result_type, call
        else:
            defn = activity_definition(fn)
            name, hint = defn.name, result_type or defn.return_type
            options = defn.options.merged(call)
        data = await self._runtime.schedule_activity(name, encode_args(args), options)
        return decode_value(data, hint)

    def now(self) -> datetime:
        """The current time, deterministic across replays."""
        return datetime.fromtimestamp(self._runtime.now_ms() / 1000, tz=UTC)

    def random(self) -> random.Random:
        """A random generator seeded by the run: the same numbers on every replay."""
        return self._random

    def uuid4(self) -> uuid.UUID:
        """A version-4 UUID drawn from :meth:`random`: the same on every replay."""
        return uuid.UUID(int=self._random.getrandbits(128), version=4)

    @property
    def is_replaying(self) -> bool:
        return self._runtime.is_replaying()
