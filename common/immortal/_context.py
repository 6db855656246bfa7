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
from typing import Any, NoReturn, TypeVar, overload

from immortal._codec import decode_value, encode_args, encode_value
from immortal._definitions import ActivityOptions, activity_definition, workflow_definition
from immortal._logs import WorkflowLogger
from immortal._retry import RetryPolicy
from immortal._timers import seconds

__all__ = ["ContinueAsNewRequest", "WorkflowContext", "WorkflowInfo", "WorkflowRuntime"]


class ContinueAsNewRequest(BaseException):
    """Raised by :meth:`WorkflowContext.continue_as_new`; a BaseException so that the
    workflow's own ``except Exception`` does not swallow it."""

    def __init__(self, payload: bytes) -> None:
        super().__init__("continue as new")
        self.payload = payload


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
    def start_timer(self, duration_ms: int, *, release: bool = False) -> asyncio.Future[None]:
        """Issue a durable timer; cancelling the future cancels the timer."""

    @abc.abstractmethod
    def wait_signal(self, name: str) -> asyncio.Future[bytes]:
        """The next signal called ``name`` not yet taken (buffered ones first)."""

    @abc.abstractmethod
    def wait_condition(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        """Resolves once ``predicate()`` is true, checked whenever the code has run."""

    @abc.abstractmethod
    def start_child(
        self,
        workflow_type: str,
        workflow_id: str | None,
        queue: str | None,
        payload: bytes,
        execution_timeout: float | None,
    ) -> asyncio.Future[bytes]:
        """Start a child run; the future resolves with its encoded result."""

    @abc.abstractmethod
    def patched(self, patch_id: str) -> bool: ...

    @abc.abstractmethod
    def set_status(self, payload: bytes) -> None: ...

    @abc.abstractmethod
    def now_ms(self) -> int:
        """Deterministic time: the time of the newest event the code has seen."""

    @abc.abstractmethod
    def is_replaying(self) -> bool: ...

    @abc.abstractmethod
    def event_id(self) -> int:
        """The newest history event the code has seen: what its log lines belong to."""

    worker_id: str = ""


class WorkflowContext:
    """Passed as the first argument to every workflow function."""

    def __init__(self, info: WorkflowInfo, runtime: WorkflowRuntime) -> None:
        self.info = info
        self._runtime = runtime
        self._random = random.Random(f"{info.workflow_id}/{info.run_id}")
        base = logging.getLogger(f"immortal.workflow.{info.workflow_type}")
        ids = {
            "tenant": info.tenant,
            "workflow_id": info.workflow_id,
            "run_id": info.run_id,
            "worker": runtime.worker_id,
        }
        # Standard logging; each line is stored in IMM_LOGS with the run and the event it
        # belongs to, and is not repeated when the workflow replays.
        self.log = WorkflowLogger(base, ids, runtime.is_replaying, runtime.event_id)

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

    async def sleep(self, duration: float | timedelta, *, release: bool = False) -> None:
        """Sleep durably: a timer on the NATS server, not in this process.

        The run survives worker and hub restarts while it sleeps. With ``release=True``
        (or when the sleep is longer than the worker's ``release_after``) the worker drops
        the run from memory; when the timer fires, any worker replays it. ``asyncio.sleep``
        in workflow code is durable too.
        """
        await self._runtime.start_timer(round(seconds(duration) * 1000), release=release)

    async def wait_signal(
        self, name: str, *, timeout: float | timedelta | None = None, result_type: Any = None
    ) -> Any:
        """Wait for the next signal ``name`` and return its payload.

        Signals are kept in arrival order; one that arrived before this call is returned at
        once. With ``timeout``, :class:`TimeoutError` is raised if none came in time (the
        timeout is a durable timer).
        """
        future = self._runtime.wait_signal(name)
        if timeout is None:
            data = await future
        else:
            async with asyncio.timeout(seconds(timeout)):
                data = await future
        return decode_value(data, result_type)

    async def wait_condition(
        self, predicate: Callable[[], bool], *, timeout: float | timedelta | None = None
    ) -> None:
        """Wait until ``predicate()`` is true (e.g. set by a signal loop); with ``timeout``,
        raise :class:`TimeoutError` if it is still false by then."""
        if predicate():
            return
        future = self._runtime.wait_condition(predicate)
        if timeout is None:
            await future
        else:
            async with asyncio.timeout(seconds(timeout)):
                await future

    async def child(
        self,
        workflow: Any,
        *args: Any,
        id: str | None = None,
        queue: str | None = None,
        execution_timeout: float | timedelta | None = None,
        result_type: Any = None,
    ) -> Any:
        """Run ``workflow`` as a child run and return its result.

        A child that fails raises :class:`ChildWorkflowError` here. When this run closes,
        children still open are asked to cancel. Fan out with ``asyncio.gather``.
        """
        if isinstance(workflow, str):
            name, hint = workflow, result_type
        else:
            defn = workflow_definition(workflow)
            name, hint = defn.name, result_type or defn.return_type
        timeout = None if execution_timeout is None else seconds(execution_timeout)
        data = await self._runtime.start_child(name, id, queue, encode_args(args), timeout)
        return decode_value(data, hint)

    def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and start a fresh one of the same workflow with ``args``: a long-lived
        workflow keeps a bounded history. Handles and results follow the new run."""
        raise ContinueAsNewRequest(encode_args(args))

    def patched(self, patch_id: str) -> bool:
        """Versioning: True on runs that reach this point with the new code, False when
        replaying a history recorded before the change.

        >>> if ctx.patched("send-receipt"):
        ...     await ctx.activity(send_receipt, order)
        """
        return self._runtime.patched(patch_id)

    def set_status(self, value: Any) -> None:
        """Publish a value that clients read with ``handle.status()`` while the run goes on."""
        self._runtime.set_status(encode_value(value))

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
