"""One run's workflow code, advanced from its history.

History is replayed activation by activation. Each ``WorkflowTaskCompleted`` event records
``through``, the newest event the worker had seen when it ran the code; replaying applies
exactly the news up to ``through``, steps the loop, and checks that the commands the code
issues match the events recorded right after that ``WorkflowTaskCompleted``. What is left
after the last recorded activation is the live one, whose commands go back to the hub.
A cached instance keeps its position, so the next task replays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from immortal._codec import decode_args, encode_value
from immortal._context import WorkflowContext, WorkflowInfo, WorkflowRuntime
from immortal._definitions import ActivityDefinition, ActivityOptions, WorkflowDefinition
from immortal._errors import (
    ActivityError,
    NonDeterminismError,
    exception_from_failure,
    failure_from_exception,
)
from immortal._wire import (
    COMMAND_EVENTS,
    CompleteWorkflow,
    EventType,
    Failure,
    FailWorkflow,
    HistoryEvent,
    ScheduleActivity,
)
from immortal_worker._loop import WorkflowLoop

__all__ = ["CacheStale", "WorkflowInstance"]

log = logging.getLogger(__name__)

_Command = ScheduleActivity | CompleteWorkflow | FailWorkflow


class CacheStale(Exception):
    """History moved on without this cached instance: replay from scratch."""


@dataclass(frozen=True)
class _Live:
    wft: int
    through: int


class WorkflowInstance(WorkflowRuntime):
    def __init__(
        self,
        defn: WorkflowDefinition,
        info: WorkflowInfo,
        worker_id: str,
        activities: dict[str, ActivityDefinition] | None = None,
    ) -> None:
        self.defn = defn
        self.info = info
        self.worker_id = worker_id
        # Activities scheduled by name take the declared options of one registered here.
        self._activities = activities or {}
        self.loop = WorkflowLoop(self._side_task_failed)  # type: ignore[abstract]
        self.ctx = WorkflowContext(info, self)
        self.events: list[HistoryEvent] = []
        self.last_seq = 0  # history stream sequence read so far
        self._ext = 0  # index of the next event to consider as news
        self._scan = 0  # index of the next event to scan for WorkflowTaskCompleted
        self._seq = 0
        self._pending: list[_Command] = []
        self._by_seq: dict[int, asyncio.Future[bytes]] = {}
        self._by_event: dict[int, tuple[str, asyncio.Future[bytes]]] = {}
        self._main: asyncio.Task[Any] | None = None
        self._finished = False
        self._replaying = False
        self._live: _Live | None = None

    # WorkflowRuntime -------------------------------------------------------------------

    def schedule_activity(
        self, name: str, payload: bytes, options: ActivityOptions
    ) -> asyncio.Future[bytes]:
        self._seq += 1
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self._by_seq[self._seq] = fut
        declared = self._activities.get(name)
        if declared is not None:
            options = declared.options.merged(options)
        if not self._finished:
            command = ScheduleActivity(
                seq=self._seq,
                name=name,
                queue=options.queue,
                input=payload,
                retry=options.retry.to_wire() if options.retry else None,
                start_to_close=options.start_to_close_s,
                schedule_to_close=options.schedule_to_close_s,
                schedule_to_start=options.schedule_to_start_s,
                heartbeat_timeout=options.heartbeat_timeout_s,
            )
            self._pending.append(command)
        return fut

    def now_ms(self) -> int:
        return self.loop.now_ms

    def is_replaying(self) -> bool:
        return self._replaying

    def _side_task_failed(self, context: dict[str, Any]) -> None:
        """An exception nobody awaited in workflow code (logged once: quiet during replay)."""
        if not self._replaying:
            log.warning(
                "workflow %s run %s: %s",
                self.info.workflow_id,
                self.info.run_id,
                context.get("message", "unhandled error"),
                exc_info=context.get("exception"),
            )

    # advancing -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._finished

    def has_completed(self, wft: int) -> bool:
        return any(
            e.type is EventType.WORKFLOW_TASK_COMPLETED and e.caused_by == wft for e in self.events
        )

    def activate(self, wft: int) -> tuple[list[_Command], int]:
        """Replay what is recorded in ``events`` past this point, run the live activation.

        Returns the live activation's commands and the newest event id it saw.
        """
        while (done := self._next_completed()) is not None:
            through = int(done.attrs["through"])
            if self._live is not None:
                if (self._live.wft, self._live.through) != (done.caused_by, through):
                    raise CacheStale(f"task {done.caused_by} was completed elsewhere")
                self._live = None
            else:
                self._replaying = True
                self._step(through)
            self._match(done)
        self._replaying = False
        through = self.events[-1].id
        self._step(through)
        self._live = _Live(wft, through)
        return list(self._pending), through  # kept pending: matched when recorded

    def close(self) -> None:
        """Unwind the code's pending coroutines (on eviction) without issuing commands."""
        self._finished = True
        if not self.loop.tasks:
            return
        for task in list(self.loop.tasks):
            task.cancel()
        with contextlib.suppress(BaseException):
            self.loop.run_until_idle()

    def _next_completed(self) -> HistoryEvent | None:
        while self._scan < len(self.events):
            ev = self.events[self._scan]
            self._scan += 1
            if ev.type is EventType.WORKFLOW_TASK_COMPLETED:
                return ev
        return None

    def _step(self, through: int) -> None:
        """Apply the news up to event ``through``, then run the code until it waits."""
        while self._ext < len(self.events) and self.events[self._ext].id <= through:
            ev = self.events[self._ext]
            self._ext += 1
            self.loop.now_ms = max(self.loop.now_ms, ev.ts)
            self._apply(ev)
        self.loop.run_until_idle()
        if self._main is not None and self._main.done() and not self._finished:
            self._finished = True
            self._pending.append(self._outcome(self._main))

    def _apply(self, ev: HistoryEvent) -> None:
        if ev.type is EventType.WORKFLOW_STARTED:
            self._main = self.loop.create_task(self._run_main(ev.attrs.get("input", b"\x90")))
        elif ev.type in (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED):
            bound = self._by_event.get(ev.caused_by or 0)
            if bound is None:
                raise NonDeterminismError(
                    f"event {ev.id} {ev.type} resolves activity event {ev.caused_by}, "
                    "which the workflow code never scheduled"
                )
            name, fut = bound
            if ev.type is EventType.ACTIVITY_COMPLETED:
                fut.set_result(ev.attrs.get("result") or b"\xc0")
            else:
                fut.set_exception(ActivityError(name, exception_from_failure(ev.attrs["failure"])))

    async def _run_main(self, payload: bytes) -> Any:
        args = decode_args(payload, self.defn.arg_types)
        return await self.defn.fn(self.ctx, *args)

    @staticmethod
    def _outcome(main: asyncio.Task[Any]) -> _Command:
        if main.cancelled():
            return FailWorkflow(
                failure=Failure(type="CancelledError", message="workflow cancelled")
            )
        exc = main.exception()
        if exc is not None:
            return FailWorkflow(failure=Failure.model_validate(failure_from_exception(exc)))
        return CompleteWorkflow(result=encode_value(main.result()))

    def _match(self, done: HistoryEvent) -> None:
        """The commands issued must be the ones recorded after ``done``, in order."""
        recorded: list[HistoryEvent] = []
        i = self._scan
        while i < len(self.events) and self.events[i].caused_by == done.id:
            if self.events[i].type in COMMAND_EVENTS:
                recorded.append(self.events[i])
            i += 1
        issued, self._pending = self._pending, []
        for n in range(max(len(issued), len(recorded))):
            cmd = issued[n] if n < len(issued) else None
            ev = recorded[n] if n < len(recorded) else None
            if cmd is None or ev is None or not _same(cmd, ev):
                raise NonDeterminismError(
                    f"replaying workflow task {done.caused_by}: history has "
                    f"{_describe_event(ev)} but the workflow code issued {_describe_command(cmd)}"
                )
            if isinstance(cmd, ScheduleActivity):
                self._by_event[ev.id] = (cmd.name, self._by_seq[cmd.seq])


def _same(cmd: _Command, ev: HistoryEvent) -> bool:
    if isinstance(cmd, ScheduleActivity):
        return (
            ev.type is EventType.ACTIVITY_SCHEDULED
            and ev.attrs.get("seq") == cmd.seq
            and ev.attrs.get("name") == cmd.name
        )
    if isinstance(cmd, CompleteWorkflow):
        return ev.type is EventType.WORKFLOW_COMPLETED
    return ev.type is EventType.WORKFLOW_FAILED


def _describe_event(ev: HistoryEvent | None) -> str:
    if ev is None:
        return "no further event"
    name = ev.attrs.get("name")
    return f"event {ev.id} {ev.type}" + (f" {name!r}" if name else "")


def _describe_command(cmd: _Command | None) -> str:
    if cmd is None:
        return "no further command"
    if isinstance(cmd, ScheduleActivity):
        return f"ScheduleActivity {cmd.name!r} (seq {cmd.seq})"
    return type(cmd).__name__
