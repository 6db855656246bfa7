"""A deterministic asyncio event loop for workflow code.

Workflow code runs only when the worker steps this loop, never on a timer or I/O: the
ready queue is drained in FIFO order, so the same history always produces the same
interleaving. Time is the time of the newest event applied, and ``call_at`` (what
``asyncio.sleep``, ``asyncio.timeout`` and ``wait_for`` use) becomes a durable timer
through ``timer_factory``. Anything else that would make the code depend on the outside
world (sockets, threads) is refused with a clear error.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

__all__ = ["WorkflowLoop"]


# (when in loop seconds, callback, args, context) -> a handle whose cancel() cancels the timer
TimerFactory = Callable[
    [float, Callable[..., object], tuple[Any, ...], contextvars.Context | None],
    asyncio.TimerHandle,
]


class WorkflowLoop(asyncio.AbstractEventLoop):
    def __init__(
        self, on_error: Callable[[dict[str, Any]], None], timer_factory: TimerFactory
    ) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self.now_ms = 0
        self._on_error = on_error
        self._timer_factory = timer_factory
        self.tasks: set[asyncio.Task[Any]] = set()

    # what asyncio.Task, Future and gather need ---------------------------------------

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def time(self) -> float:
        return self.now_ms / 1000.0

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self._on_error(context)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self._on_error(context)

    # stepping --------------------------------------------------------------------------

    def run_until_idle(self) -> None:
        """Run every ready callback, and those they schedule, until none is left."""
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle._cancelled:
                    handle._run()
        finally:
            asyncio.events._set_running_loop(outer)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass  # TimerHandle.cancel() reports here; the durable timer is cancelled by its owner

    # refused ---------------------------------------------------------------------------

    def call_later(  # type: ignore[override]
        self,
        delay: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return self._timer_factory(when, callback, args, context)

    def run_in_executor(self, *args: Any, **kwargs: Any) -> NoReturn:  # type: ignore[override]
        _refuse("run_in_executor", "do blocking work in an activity")

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("network I/O", "do I/O in an activity")

    async def create_connection(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("network I/O", "do I/O in an activity")

    async def create_server(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse("network I/O", "do I/O in an activity")


def _refuse(what: str, hint: str) -> NoReturn:
    raise RuntimeError(f"workflow code may not use {what}: {hint}")
