"""A handle on one run: await its result, signal, cancel or terminate it, read its
history, logs and description (``Client.start`` and ``Client.get_handle`` make one)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from immortal._codec import decode_value, encode_value
from immortal._errors import (
    ImmortalError,
    PayloadError,
    WorkflowClosedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    exception_from_failure,
)
from immortal._inputs import send_input
from immortal._integrity import IntegrityReport, verify_chain
from immortal._jetstream import (
    StoredMsg,
    last_message,
    live_subscribe,
    read_subject,
    tail,
)
from immortal._logs import LogLine, decode_log
from immortal._names import InputKind
from immortal._refusals import find_refusal, watch_refusal
from immortal._transient import retry_transient
from immortal._wire import (
    CLOSING_EVENTS,
    EventType,
    HistoryEvent,
    RequestCancel,
    RequestTerminate,
    SignalWorkflow,
    Transition,
    decode,
    encode,
    now_ms,
)
from immortal.codec import Binding
from immortal.codec._fields import FAILURE, RESULT, STATUS, signal_field
from immortal.codec._sealing import open_failure, open_payload, seal
from immortal.runs import (
    RunDescription,
    describe_run,
    find_closed_record,
)
from immortal.security import client_side as auth

if TYPE_CHECKING:
    from immortal._client import Client

__all__ = ["WorkflowHandle"]

log = logging.getLogger(__name__)
# result() reads the run's newest transition again after this many quiet seconds, doubling
# up to the maximum (it learns of appends from a core subscription, which can miss one).
_LOOK_AGAIN_S = 1.0
_LOOK_AGAIN_MAX_S = 60.0

R = TypeVar("R")


class WorkflowHandle(Generic[R]):
    """A reference to one run."""

    def __init__(
        self,
        client: Client,
        workflow_id: str,
        run_id: str,
        result_type: Any = None,
        *,
        queued_on: str | None = None,
        newest: bool = False,
    ) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._result_type = result_type
        self._known_events = 0  # events this handle has seen exist (reads return no fewer)
        # The queue the run's start was queued on, if it is known to be durable (inputs sent
        # before a hub applied it wait for it); and whether the handle names "the newest run
        # of the workflow id" rather than one run (an input then goes to a newer queued one).
        self._queued_on = queued_on
        self._newest = newest

    @property
    def _subject(self) -> str:
        return self.client.names.history_subject(self.client.tenant, self.workflow_id, self.run_id)

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r}, run_id={self.run_id!r})"

    async def _last_transition(self) -> Transition | None:
        nc, stream = self.client.nc, self.client.names.stream_history
        msg = await retry_transient(
            lambda: last_message(nc, stream, self._subject), what=self._subject
        )
        transition = None if msg is None else decode(Transition, msg.data)
        self._saw(transition)
        return transition

    def _saw(self, transition: Transition | None) -> None:
        """Remember how far this run's history is known to reach (see ``_read``)."""
        if transition is not None:
            self._known_events = max(self._known_events, transition.state.next_event_id - 1)

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the run to close; return its result or raise :class:`WorkflowFailedError`.

        A run that continued as new is followed to the run that finally closes; a cancelled
        run raises :class:`WorkflowFailedError` whose cause has type ``WorkflowCancelled``.
        """
        async with asyncio.timeout(timeout):
            while True:
                events = await self._closing_events()
                new_run = next(
                    (
                        str(e.attrs["new_run_id"])
                        for e in events
                        if e.type is EventType.WORKFLOW_CONTINUED_AS_NEW
                    ),
                    None,
                )
                if new_run is None:
                    return self._outcome(events)
                self.run_id = new_run  # follow the chain; the handle now names the new run
                self._known_events = 0

    async def _closing_events(self) -> list[HistoryEvent]:
        nc = self.client.nc
        updates: asyncio.Queue[bytes] = asyncio.Queue()  # b"": reconnected, look again

        async def on_append(msg: Any) -> None:
            updates.put_nowait(msg.data)

        # Subscribe before reading, so an append between the two cannot be missed.
        history = self.client.names.stream_history
        sub = await live_subscribe(nc, history, self._subject, on_append)  # None: reads only
        refusals = await watch_refusal(
            nc, self.client.names, self.client.tenant, self.run_id, updates
        )
        self.client._waiting.add(updates)
        try:
            transition = await self._last_transition()
            look_after = _LOOK_AGAIN_S
            while transition is None or not transition.state.status.closed:
                if transition is None:  # a start refused after it waited in IMM_IN?
                    await self._raise_if_refused()
                # Core messages are not stored: one published while we reconnected to
                # another node is lost (the client then puts b"" in the queue), and the
                # first read may have come from a replica not yet up to date. So look
                # again after a reconnect, and when nothing came for a while.
                data = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(look_after):
                        data = await updates.get()
                if data:
                    transition = decode(Transition, data)
                    self._saw(transition)
                    continue
                # After a reconnect, soon again too: our interest may not have reached
                # every node yet when we looked.
                look_after = _LOOK_AGAIN_S if data == b"" else look_after * 2
                look_after = min(look_after, _LOOK_AGAIN_MAX_S if sub else _LOOK_AGAIN_S)
                transition = await self._last_transition()
            events = transition.events
            if not any(e.type in CLOSING_EVENTS for e in events):
                # Histories written before closed runs were sealed may record late
                # results (as ignored) after the close.
                events = await self.history()
            return events
        finally:
            self.client._waiting.discard(updates)
            if sub is not None:
                await sub.unsubscribe()
            if refusals is not None:
                await refusals.unsubscribe()

    async def _raise_if_refused(self) -> None:
        client = self.client
        refused = await find_refusal(client.nc, client.names, client.tenant, self.run_id)
        if refused is not None:
            raise refused

    def _at(self, field: str) -> Binding:
        return Binding(self.client.tenant, self.workflow_id, self.run_id, field)

    def _outcome(self, events: list[HistoryEvent]) -> R:
        codec = self.client.codec
        for event in reversed(events):
            if event.type is EventType.WORKFLOW_COMPLETED:
                result = open_payload(codec, self._at(RESULT), event.attrs.get("result"))
                return decode_value(result, self._result_type)  # type: ignore[no-any-return]
            if event.type is EventType.WORKFLOW_FAILED:
                failure = open_failure(codec, self._at(FAILURE), event.attrs["failure"])
                cause = exception_from_failure(failure)
                raise WorkflowFailedError(self.workflow_id, self.run_id, cause)
            if event.type in (EventType.WORKFLOW_CANCELED, EventType.WORKFLOW_TERMINATED):
                reason = str(event.attrs.get("reason") or "")
                what = "cancelled" if event.type is EventType.WORKFLOW_CANCELED else "terminated"
                cause = exception_from_failure(
                    {
                        "type": f"Workflow{what.capitalize()}",
                        "message": f"workflow {what}: {reason}",
                    }
                )
                raise WorkflowFailedError(self.workflow_id, self.run_id, cause)
        raise ImmortalError(f"run {self.run_id} closed without an outcome event")

    async def signal(self, name: str, payload: Any = None, *, id: str | None = None) -> None:
        """Send signal ``name`` with ``payload``; recorded in history in arrival order.

        Sending again with the same ``id`` (a retry after an error) records it once, as long
        as the first is among the run's recent inputs or within JetStream's duplicate window.
        """
        body = SignalWorkflow(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            name=name,
            input=encode_value(payload),
            signal_id=f"signal:{id or uuid.uuid4().hex}",
        )
        await self._send("signal", body, body.signal_id)

    async def cancel(self, reason: str = "") -> None:
        """Ask the run to cancel: workflow code sees ``asyncio.CancelledError`` at its await
        points and may clean up; activities in flight are told through their heartbeat."""
        body = RequestCancel(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            reason=reason,
            request_id=f"cancel:{uuid.uuid4().hex}",
        )
        await self._send("cancel", body, body.request_id)

    async def terminate(self, reason: str = "") -> None:
        """Close the run at once, without running its code (which gets no chance to clean
        up): recorded as ``WorkflowTerminated`` with ``reason``; open timers are purged and
        children asked to cancel. ``handle.result()`` then raises
        :class:`WorkflowFailedError` whose cause has type ``WorkflowTerminated``. For a run
        that should clean up, :meth:`cancel` it instead.
        """
        body = RequestTerminate(
            workflow_id=self.workflow_id,
            run_id=self.run_id,
            reason=reason,
            request_id=f"terminate:{uuid.uuid4().hex}",
        )
        await self._send("terminate", body, body.request_id)

    async def status(self, result_type: Any = None) -> Any:
        """The value the workflow last published with ``ctx.set_status`` (None if none);
        read from the run's latest transition, so it changes nothing."""
        transition = await self._last_transition()
        if transition is None:
            raise WorkflowNotFoundError(f"run {self.run_id} of {self.workflow_id!r} not found")
        value = open_payload(self.client.codec, self._at(STATUS), transition.state.status_value)
        return decode_value(value, result_type)

    async def _send(
        self, kind: InputKind, body: SignalWorkflow | RequestCancel | RequestTerminate, msg_id: str
    ) -> None:
        auth.require_write(self.client.security, f"{kind} workflows")
        transition = await self._last_transition()
        if transition is None or (self._newest and transition.state.status.closed):
            queue = await self._queued_start(no_history=transition is None)
            if queue is not None:  # the hub applies it after the start
                body = body.model_copy(update={"run_id": self.run_id, "pending_start": True})
                await self._deliver(queue, kind, self._sealed(body), msg_id)
                return
        if transition is None:
            raise WorkflowNotFoundError(f"run {self.run_id} of {self.workflow_id!r} not found")
        state = transition.state
        if state.status.closed:
            raise WorkflowClosedError(
                f"cannot {kind} run {self.run_id} of {self.workflow_id!r}: it is already "
                f"{state.status}"
            )
        await self._deliver(state.queue, kind, self._sealed(body), msg_id)

    def _sealed(self, body: SignalWorkflow | RequestCancel | RequestTerminate) -> bytes:
        """The input's bytes, a signal's payload sealed for the run it goes to now."""
        if isinstance(body, SignalWorkflow) and self.client.codec is not None:
            where = self._at(signal_field(body.name))
            body = body.model_copy(update={"input": seal(self.client.codec, where, body.input)})
        return encode(body)

    async def _queued_start(self, *, no_history: bool) -> str | None:
        """The queue of this run's start if it is durable but not applied yet: known from
        ``client.start``, else found in ``IMM_IN``; for a handle on the newest run of the
        workflow id, a newer run's start queued there counts too (the handle moves to it)."""
        if no_history and self._queued_on is not None:
            return self._queued_on
        wanted = None if self._newest else self.run_id
        queued = await self.client._queued_start(self.workflow_id, wanted)
        if queued is None:
            return None
        self.run_id, self._queued_on = queued
        self._known_events = 0
        return self._queued_on

    async def _deliver(self, queue: str, kind: InputKind, data: bytes, msg_id: str) -> None:
        client = self.client
        try:
            await send_input(
                client.nc, client.names, client.tenant, queue, kind, data, msg_id=msg_id
            )
        except PayloadError as exc:  # the run closed meanwhile
            raise WorkflowClosedError(str(exc)) from exc

    async def describe(self) -> RunDescription:
        """Where the run stands: status, times, history length, and what it waits for (its
        pending activities, with their attempts, last failures, heartbeats and workers;
        its timers)."""
        transition = await self._last_transition()
        if transition is None:
            raise WorkflowNotFoundError(
                f"run {self.run_id} of {self.workflow_id!r} has no history (yet)"
            )
        state = transition.state
        running_on: dict[str, str] = {}
        if state.activities and not state.status.closed:
            for queue in sorted({a.queue for a in state.activities.values()}):
                for worker in await self.client.workers(queue):
                    running_on.update(dict.fromkeys(worker.running, worker.worker))
        return describe_run(state, running_on, now_ms())

    async def history(self, *, from_seq: int = 1) -> list[HistoryEvent]:
        """Every event of the run, in order (from stream sequence ``from_seq`` on), payloads
        as stored (sealed ones too: ``immortal.codec.reveal_events`` opens them)."""
        events: list[HistoryEvent] = []
        for msg in await self._read(from_seq):
            events.extend(decode(Transition, msg.data).events)
        return events

    async def _read(self, from_seq: int = 1) -> list[StoredMsg]:
        """The run's history messages from ``from_seq`` on, reaching at least as far as this
        handle has seen: a replica that has not applied the newest appends yet may answer a
        direct get, so a read that falls short is repeated (briefly)."""
        client = self.client
        nc, stream = client.nc, client.names.stream_history

        async def read() -> list[StoredMsg]:
            return [m async for m in read_subject(nc, stream, self._subject, from_seq=from_seq)]

        for _ in range(50):
            messages = await retry_transient(read, what=self._subject)
            last = decode(Transition, messages[-1].data) if messages else None
            reached = last.state.next_event_id - 1 if last is not None else 0
            if reached >= self._known_events or from_seq > 1:
                self._saw(last)
                return messages
            await asyncio.sleep(0.05)
        return messages

    async def transitions(
        self, *, from_seq: int = 1, follow: bool = False
    ) -> AsyncIterator[tuple[int, list[HistoryEvent]]]:
        """(stream sequence, events) of each history message from ``from_seq`` on; with
        ``follow``, then each new one live, until the run closes."""
        client = self.client
        records = tail(
            client.nc, client.names.stream_history, self._subject, from_seq=from_seq, follow=follow
        )
        async with contextlib.aclosing(records):  # its subscription ends with us, not at exit
            async for msg in records:
                transition = decode(Transition, msg.data)
                yield msg.seq, transition.events
                if follow and transition.state.status.closed:
                    return

    async def logs(self, *, from_seq: int = 1, follow: bool = False) -> AsyncIterator[LogLine]:
        """The run's log lines from every worker, in the server's order (``seq``), from
        stream sequence ``from_seq`` on; ``follow`` keeps tailing until the caller stops."""
        client = self.client
        subject = client.names.log_subject(client.tenant, self.workflow_id, self.run_id)
        async for msg in tail(
            client.nc, client.names.stream_logs, subject, from_seq=from_seq, follow=follow
        ):
            yield decode_log(msg.seq, msg.data)

    async def verify(self) -> IntegrityReport:
        """Check the run's history chain: no message deleted, altered or reordered."""
        client = self.client
        read = await self._read()
        messages = [(m.seq, m.data) for m in read]
        head = None
        if read:  # a closed run's index record anchors its newest message
            state = decode(Transition, read[-1].data).state
            found = await retry_transient(
                lambda: find_closed_record(client.nc, client.names, client.tenant, state),
                what="the runs index",
            )
            anchor = found[1].get("head") if found is not None else None
            head = anchor if isinstance(anchor, bytes) else None
        return verify_chain(messages, head)
