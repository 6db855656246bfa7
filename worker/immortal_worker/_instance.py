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
import collections
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from immortal._codec import decode_args, encode_value
from immortal._context import ContinueAsNewRequest, WorkflowContext, WorkflowInfo, WorkflowRuntime
from immortal._definitions import ActivityDefinition, ActivityOptions, WorkflowDefinition
from immortal._errors import (
    ActivityError,
    ChildWorkflowError,
    NonDeterminismError,
    exception_from_failure,
    failure_from_exception,
)
from immortal._wire import (
    COMMAND_EVENTS,
    ActivityResult,
    AnyCommand,
    CancelActivity,
    CancelTimer,
    CancelWorkflow,
    CompleteWorkflow,
    ContinueAsNew,
    EventType,
    Failure,
    FailWorkflow,
    HistoryEvent,
    RecordMarker,
    RunAhead,
    ScheduleActivity,
    SetStatus,
    StartChild,
    StartTimer,
)
from immortal.codec import PayloadCodec
from immortal_worker._loop import WorkflowLoop
from immortal_worker._sealed import RunSeals

__all__ = ["CacheStale", "WorkflowInstance"]

log = logging.getLogger(__name__)

_Command = AnyCommand


class CacheStale(Exception):
    """History moved on without this cached instance: replay from scratch."""


@dataclass(frozen=True)
class _Live:
    wft: int
    through: int


@dataclass
class _Timer:
    future: asyncio.Future[None]
    due: int  # ms, as this worker reckons it (the hub's figure is in the event)
    release: bool


@dataclass
class _Pending:
    """Something the code waits on that history resolves: an activity or a child run."""

    name: str  # the activity's name, or the child's workflow type
    future: asyncio.Future[bytes]
    workflow_id: str = ""  # a child's


@dataclass
class _Signals:
    buffered: collections.deque[bytes] = field(default_factory=collections.deque)
    waiters: collections.deque[asyncio.Future[bytes]] = field(default_factory=collections.deque)


class _DurableTimerHandle(asyncio.TimerHandle):
    """What ``loop.call_at`` returns in workflow code: cancelling it cancels the timer."""

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: WorkflowLoop,
        context: contextvars.Context | None,
        future: asyncio.Future[None],
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._future = future

    def cancel(self) -> None:
        if not self.cancelled():
            super().cancel()
            self._future.cancel()


class WorkflowInstance(WorkflowRuntime):
    def __init__(
        self,
        defn: WorkflowDefinition,
        info: WorkflowInfo,
        worker_id: str,
        activities: dict[str, ActivityDefinition] | None = None,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.defn = defn
        self.seals = RunSeals(codec, info)  # the run's payloads, sealed and opened
        self.info = info
        self.worker_id = worker_id
        # Activities scheduled by name take the declared options of one registered here.
        self._activities = activities or {}
        self.loop = WorkflowLoop(self._side_task_failed, self._loop_timer)  # type: ignore[abstract]
        self.ctx = WorkflowContext(info, self)
        self.events: list[HistoryEvent] = []
        self.last_seq = 0  # history stream sequence read so far
        self._learned = time.monotonic()  # when the newest of ``events`` came from the hub
        self._ext = 0  # index of the next event to consider as news
        self._scan = 0  # index of the next event to scan for WorkflowTaskCompleted
        self._seq = 0
        self._pending: list[_Command] = []
        self._waiting: dict[int, _Pending] = {}  # by seq: open activities and children
        self._timers: dict[int, _Timer] = {}  # by seq: open timers
        self._event_seq: dict[int, int] = {}  # command event id -> seq
        self._signals: collections.defaultdict[str, _Signals] = collections.defaultdict(_Signals)
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._patches: dict[str, bool] = {}
        self._replay_patches: set[str] = set()
        self.cancel_requested = ""
        self._main: asyncio.Task[Any] | None = None
        self._finished = False
        self._replaying = False
        self._live: _Live | None = None

    # WorkflowRuntime -------------------------------------------------------------------

    def _command(self, command: _Command) -> None:
        if not self._finished:
            self._pending.append(command)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def schedule_activity(
        self, name: str, payload: bytes, options: ActivityOptions
    ) -> asyncio.Future[bytes]:
        seq = self._next_seq()
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self._waiting[seq] = _Pending(name, fut)
        fut.add_done_callback(functools.partial(self._activity_done, seq))
        declared = self._activities.get(name)
        if declared is not None:
            options = declared.options.merged(options)
        self._command(
            ScheduleActivity(
                seq=seq,
                name=name,
                queue=options.queue,
                input=self.seals.activity_input(seq, payload),
                retry=options.retry.to_wire() if options.retry else None,
                start_to_close=options.start_to_close_s,
                schedule_to_close=options.schedule_to_close_s,
                schedule_to_start=options.schedule_to_start_s,
                heartbeat_timeout=options.heartbeat_timeout_s,
            )
        )
        return fut

    def _activity_done(self, seq: int, fut: asyncio.Future[bytes]) -> None:
        # The code stopped waiting (its task was cancelled): close the activity in history,
        # which tells a heartbeating attempt to stop.
        if fut.cancelled() and self._waiting.pop(seq, None) is not None:
            self._command(CancelActivity(seq=seq))

    def start_timer(self, duration_ms: int, *, release: bool = False) -> asyncio.Future[None]:
        seq = self._next_seq()
        fut: asyncio.Future[None] = self.loop.create_future()
        duration_ms = max(0, duration_ms)
        self._timers[seq] = _Timer(fut, self.loop.now_ms + duration_ms, release)
        fut.add_done_callback(functools.partial(self._timer_done, seq))
        self._command(StartTimer(seq=seq, duration_ms=duration_ms))
        return fut

    def _timer_done(self, seq: int, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() and self._timers.pop(seq, None) is not None:
            self._command(CancelTimer(seq=seq))  # cancelled before it fired

    def _loop_timer(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        fut = self.start_timer(round(when * 1000) - self.loop.now_ms)
        handle = _DurableTimerHandle(when, callback, args, self.loop, context, fut)

        def fired(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and not handle.cancelled():
                handle._run()

        fut.add_done_callback(fired)
        return handle

    def wait_signal(self, name: str) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = self.loop.create_future()
        signals = self._signals[name]
        if signals.buffered:
            fut.set_result(signals.buffered.popleft())
        else:
            signals.waiters.append(fut)
        return fut

    def wait_condition(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self._conditions.append((predicate, fut))
        return fut

    def start_child(
        self,
        workflow_type: str,
        workflow_id: str | None,
        queue: str | None,
        payload: bytes,
        execution_timeout: float | None,
    ) -> asyncio.Future[bytes]:
        seq = self._next_seq()
        child_id = workflow_id or f"{self.info.workflow_id}-child-{seq}"
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self._waiting[seq] = _Pending(workflow_type, fut, child_id)
        self._command(
            StartChild(
                seq=seq,
                workflow_type=workflow_type,
                workflow_id=child_id,
                queue=queue,
                input=self.seals.child_input(child_id, payload),
                execution_timeout=execution_timeout,
            )
        )
        return fut

    def patched(self, patch_id: str) -> bool:
        if patch_id not in self._patches:
            # Live code takes the new path; a replay takes it only where history says so.
            value = patch_id in self._replay_patches if self._replaying else True
            self._patches[patch_id] = value
            if value:
                self._command(RecordMarker(patch=patch_id))
        return self._patches[patch_id]

    def set_status(self, payload: bytes) -> None:
        self._command(SetStatus(value=self.seals.status(payload)))

    def now_ms(self) -> int:
        return self.loop.now_ms

    def event_id(self) -> int:
        return self.events[self._ext - 1].id if self._ext else 0

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

    def has_completed(self, wft: int, events: list[HistoryEvent] | None = None) -> bool:
        """Whether workflow task ``wft`` was completed (in ``events``, else in history)."""
        return any(
            e.type is EventType.WORKFLOW_TASK_COMPLETED and e.caused_by == wft
            for e in (self.events if events is None else events)
        )

    def releasable(self, release_after_ms: int) -> bool:
        """Whether the run only waits on a timer, a long one or one asked to release memory:
        then the worker may drop it and whichever worker gets the firing replays it."""
        if self._finished or not self._timers or self._waiting:
            return False
        if any(t.release for t in self._timers.values()):
            return True
        return min(t.due for t in self._timers.values()) - self.loop.now_ms >= release_after_ms

    def learn(self, events: list[HistoryEvent], seq: int, *, replacing_from: int = -1) -> None:
        """Add what the hub appended (up to history sequence ``seq``); ``replacing_from``:
        in place of the events from that index on (those this worker ran ahead on)."""
        if replacing_from >= 0:
            del self.events[replacing_from:]
        self.events.extend(events)
        self.last_seq = seq
        self._learned = time.monotonic()

    def hub_time(self) -> int:
        """The time on the hub's clock, as this worker reckons it without its own clock: the
        newest event's time plus what elapsed since it arrived. Never later than the hub's
        clock (the event took a while to arrive), never earlier than the newest event."""
        newest = self.events[-1].ts if self.events else 0
        return newest + max(0, round((time.monotonic() - self._learned) * 1000))

    def run_ahead(self, scheduled_id: int, result: ActivityResult) -> RunAhead | None:
        """Add the events a hub would append for this activity result
        (``ActivityCompleted``, then ``WorkflowTaskScheduled``) and run the workflow task they
        make; the commands go with the result (``RunAhead``). None if the code cannot run
        that task through here (the task then comes from the hub, as usual)."""
        n, ts = self.events[-1].id + 1, self.hub_time()
        attrs = result.model_dump(
            include={"attempt", "delivery", "worker", "started_ts", "ended_ts"}
        )
        self.events += [
            HistoryEvent(
                id=n,
                type=EventType.ACTIVITY_COMPLETED,
                ts=ts,
                caused_by=scheduled_id,
                attrs={"result": result.result, **attrs},
            ),
            HistoryEvent(id=n + 1, type=EventType.WORKFLOW_TASK_SCHEDULED, ts=ts, caused_by=n),
        ]
        try:
            commands, through = self.activate(n + 1)
        except Exception as exc:  # replayed from history with the task, as usual
            log.debug("run %s: not run ahead: %r", self.info.run_id, exc)
            return None
        return RunAhead(wft=n + 1, ts=ts, commands=commands) if through == n + 1 else None

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
                self._replay_patches = {
                    str(e.attrs.get("patch"))
                    for e in self.events[self._scan :]
                    if e.caused_by == done.id and e.type is EventType.MARKER_RECORDED
                }
                self._step(through)
            self._match(done)
        self._replaying = False
        through = self.events[-1].id
        self._step(through)
        self._live = _Live(wft, through)
        return list(self._pending), through  # kept pending: matched when recorded

    def close(self) -> None:
        """Unwind the code's pending coroutines (on eviction) without issuing commands, or
        logging: what they do now is not part of the run."""
        self._finished = True
        self._replaying = True
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
        self._run()
        if self._main is not None and self._main.done() and not self._finished:
            self._pending.append(self._outcome(self._main))
            self._finished = True

    def _run(self) -> None:
        """Run the code until it waits, re-checking ``wait_condition`` predicates."""
        while True:
            self.loop.run_until_idle()
            woke = False
            for predicate, fut in list(self._conditions):
                if fut.done():
                    self._conditions.remove((predicate, fut))
                elif predicate():
                    self._conditions.remove((predicate, fut))
                    fut.set_result(None)
                    woke = True
            if not woke:
                return

    def _apply(self, ev: HistoryEvent) -> None:
        t = ev.type
        if t is EventType.WORKFLOW_STARTED:
            self._main = self.loop.create_task(self._run_main(self.seals.start_input(ev)))
        elif t in _RESOLVING:
            self._resolve(ev)
        elif t is EventType.TIMER_FIRED:
            timer = self._timers.pop(self._bound(ev), None)
            if timer is not None and not timer.future.done():
                timer.future.set_result(None)
        elif t is EventType.WORKFLOW_SIGNALED:
            signals = self._signals[str(ev.attrs.get("name"))]
            payload = self.seals.signal(ev, self.ctx.log)
            if payload is None:  # refused: it does not belong to this run
                return
            while signals.waiters:
                waiter = signals.waiters.popleft()
                if not waiter.done():  # a wait that timed out is skipped
                    waiter.set_result(payload)
                    return
            signals.buffered.append(payload)
        elif t is EventType.WORKFLOW_CANCEL_REQUESTED:
            self.cancel_requested = str(ev.attrs.get("reason") or "cancellation requested")
            if self._main is not None:
                self._main.cancel(self.cancel_requested)

    def _bound(self, ev: HistoryEvent) -> int:
        """The seq of the command whose event ``ev`` resolves."""
        seq = self._event_seq.get(ev.caused_by or 0)
        if seq is None:
            raise NonDeterminismError(
                f"event {ev.id} {ev.type} resolves event {ev.caused_by}, "
                "which the workflow code never issued",
                event_id=ev.id,
                history=_describe_event(ev),
                code=f"no command for event {ev.caused_by}",
            )
        return seq

    def _resolve(self, ev: HistoryEvent) -> None:
        """An activity or child run closed: wake the code that waits on it."""
        seq = self._bound(ev)
        pending = self._waiting.pop(seq, None)
        if pending is None or pending.future.done():
            return  # the code stopped waiting (cancelled)
        if ev.type in (EventType.ACTIVITY_COMPLETED, EventType.CHILD_WORKFLOW_COMPLETED):
            result = self.seals.resolved(ev, seq)
            if isinstance(result, bytes):
                pending.future.set_result(result)
                return
            cause = result  # the result was refused
        else:
            cause = exception_from_failure(self.seals.failure(ev, seq))
        if ev.type in (EventType.ACTIVITY_FAILED, EventType.ACTIVITY_COMPLETED):
            pending.future.set_exception(ActivityError(pending.name, cause))
        else:
            pending.future.set_exception(
                ChildWorkflowError(pending.name, pending.workflow_id, cause)
            )

    async def _run_main(self, payload: bytes | Exception) -> Any:
        if isinstance(payload, Exception):  # the input was refused: the run fails with why
            raise payload
        args = decode_args(payload, self.defn.arg_types)
        return await self.defn.fn(self.ctx, *args)

    def _outcome(self, main: asyncio.Task[Any]) -> _Command:
        if main.cancelled():
            if self.cancel_requested:
                return CancelWorkflow(reason=self.cancel_requested)
            return FailWorkflow(
                failure=Failure(type="CancelledError", message="workflow cancelled")
            )
        exc = main.exception()
        if isinstance(exc, ContinueAsNewRequest):
            return ContinueAsNew(input=self.seals.continue_input(exc.payload))
        if exc is not None:
            failure = Failure.model_validate(failure_from_exception(exc))
            return FailWorkflow(failure=self.seals.run_failure(failure))
        return CompleteWorkflow(result=self.seals.result(encode_value(main.result())))

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
                history, code = _describe_event(ev), _describe_command(cmd)
                raise NonDeterminismError(
                    f"replaying workflow task {done.caused_by}: history has "
                    f"{history} but the workflow code issued {code}",
                    event_id=ev.id if ev is not None else done.id,
                    history=history,
                    code=code,
                )
            if isinstance(cmd, ScheduleActivity | StartTimer | StartChild):
                self._event_seq[ev.id] = cmd.seq


_RESOLVING = frozenset(
    {
        EventType.ACTIVITY_COMPLETED,
        EventType.ACTIVITY_FAILED,
        EventType.CHILD_WORKFLOW_COMPLETED,
        EventType.CHILD_WORKFLOW_FAILED,
    }
)

# Each command and the event that records it; ``key`` names the attribute both must share.
_RECORDED_AS: dict[type[Any], tuple[EventType, str | None]] = {
    ScheduleActivity: (EventType.ACTIVITY_SCHEDULED, "seq"),
    CancelActivity: (EventType.ACTIVITY_CANCELED, "seq"),
    StartTimer: (EventType.TIMER_STARTED, "seq"),
    CancelTimer: (EventType.TIMER_CANCELED, "seq"),
    StartChild: (EventType.CHILD_WORKFLOW_SCHEDULED, "seq"),
    RecordMarker: (EventType.MARKER_RECORDED, "patch"),
    SetStatus: (EventType.STATUS_SET, None),
    CompleteWorkflow: (EventType.WORKFLOW_COMPLETED, None),
    FailWorkflow: (EventType.WORKFLOW_FAILED, None),
    CancelWorkflow: (EventType.WORKFLOW_CANCELED, None),
    ContinueAsNew: (EventType.WORKFLOW_CONTINUED_AS_NEW, None),
}


def _same(cmd: _Command, ev: HistoryEvent) -> bool:
    event_type, key = _RECORDED_AS[type(cmd)]
    if ev.type is not event_type:
        return False
    if isinstance(cmd, ScheduleActivity) and ev.attrs.get("name") != cmd.name:
        return False
    if isinstance(cmd, StartChild) and ev.attrs.get("workflow_type") != cmd.workflow_type:
        return False
    return key is None or ev.attrs.get(key) == getattr(cmd, key)


def _describe_event(ev: HistoryEvent | None) -> str:
    if ev is None:
        return "no further event"
    name = ev.attrs.get("name") or ev.attrs.get("workflow_type") or ev.attrs.get("patch")
    return f"event {ev.id} {ev.type}" + (f" {name!r}" if name else "")


def _describe_command(cmd: _Command | None) -> str:
    if cmd is None:
        return "no further command"
    if isinstance(cmd, ScheduleActivity):
        return f"ScheduleActivity {cmd.name!r} (seq {cmd.seq})"
    if isinstance(cmd, StartChild):
        return f"StartChild {cmd.workflow_type!r} (seq {cmd.seq})"
    if isinstance(cmd, RecordMarker):
        return f"patch marker {cmd.patch!r}"
    if isinstance(cmd, FailWorkflow):  # often the changed code itself raising
        return f"FailWorkflow ({cmd.failure.type}: {cmd.failure.message})"
    return type(cmd).__name__
