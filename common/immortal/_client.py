"""The client: start workflows, await their results, read their state and history.

>>> async with Client("nats://127.0.0.1:4222") as client:
...     handle = await client.start(place_order, order, id="order-42")
...     receipt = await handle.result()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._claims import IdReusePolicy, claim_start
from immortal._codec import decode_value, encode_args, encode_value, unpack
from immortal._connect import connect, display_urls
from immortal._definitions import workflow_definition
from immortal._dlq import DeadLetters
from immortal._errors import (
    ImmortalError,
    NotSetUpError,
    PayloadError,
    WorkflowClosedError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    exception_from_failure,
)
from immortal._inputs import find_queued_start, send_input
from immortal._integrity import IntegrityReport, verify_chain
from immortal._jetstream import (
    StoredMsg,
    kv_scan,
    last_message,
    live_subscribe,
    read_subject,
    require_jetstream,
    tail,
)
from immortal._logs import LogLine, decode_log
from immortal._names import InputKind, Names, decode_token, encode_token, validate_tenant
from immortal._queues import QueueStats, queue_stats
from immortal._refusals import find_refusal, watch_refusal
from immortal._revealed import revealed_fields
from immortal._schedules import Schedules
from immortal._tenants import Retention, read_retention, write_retention
from immortal._timers import seconds
from immortal._transient import key_value, retry_transient
from immortal._wire import (
    CLOSING_EVENTS,
    EventType,
    HistoryEvent,
    RequestCancel,
    RequestTerminate,
    SignalWorkflow,
    StartWorkflow,
    Transition,
    decode,
    encode,
    now_ms,
)
from immortal._workers import WorkerInfo, worker_info
from immortal.codec import Binding, PayloadCodec
from immortal.codec._fields import FAILURE, INPUT, RESULT, STATUS, signal_field
from immortal.codec._sealing import open_failure, open_payload, seal
from immortal.runs import (
    RunDescription,
    RunInfo,
    RunPage,
    describe_run,
    find_closed_record,
    list_runs,
    runs_of,
)
from immortal.security import client_side as auth
from immortal.security.connection import ConnectSecurity, relays_reads

__all__ = [
    "Client",
    "IdReusePolicy",
    "QueueStats",
    "WorkerInfo",
    "WorkflowHandle",
]

log = logging.getLogger(__name__)
_WORKERS_FRESH_S = 2.0  # how long start() trusts its last look at the live workers
# result() reads the run's newest transition again after this many quiet seconds, doubling
# up to the maximum (it learns of appends from a core subscription, which can miss one).
_LOOK_AGAIN_S = 1.0
_LOOK_AGAIN_MAX_S = 60.0

R = TypeVar("R")


class Client:
    """A connection to an Immortal deployment for one tenant.

    Until NATS answers, connecting logs why (a WARNING, then INFO with a growing pause)
    and keeps trying; with ``connect_timeout`` it gives up after that many seconds with
    :class:`ServerUnreachableError`.
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        tenant: str | None = None,
        prefix: str = "imm",
        nc: NATS | None = None,
        connect_timeout: float | None = None,
        security: ConnectSecurity | None = None,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.servers = servers
        self.codec = codec  # seals payloads this client sends, opens those it reads
        self.connect_timeout = connect_timeout
        self.security = security
        self.tenant = validate_tenant(auth.tenant_of(security, tenant))  # a token's: its own
        self.names = Names(prefix)
        self._nc = nc
        self._own_nc = nc is None
        self._known_queues: set[str] = set()
        self._buckets: dict[str, KeyValue] = {}
        self._waiting: set[asyncio.Queue[bytes]] = set()  # of result() calls
        self._workers_seen: dict[str, tuple[float, list[WorkerInfo]]] = {}
        self.schedules = Schedules(self)
        self.dead_letters = DeadLetters(self)
        self._workers_looking: dict[str, asyncio.Future[list[WorkerInfo]]] = {}

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._nc is None:
            self._nc = await connect(
                self.servers,
                name="immortal-client",
                on_reconnect=self._reconnected,
                security=self.security,
                timeout=self.connect_timeout,
            )

    async def check_set_up(self) -> None:
        """Raise :class:`NotSetUpError` unless a hub has created Immortal's streams and
        buckets on this server (under this client's prefix): a read would otherwise wait
        out its retries and fail with NATS' own error."""
        history = self.names.stream_history
        await require_jetstream(self.nc, display_urls(self.servers))
        if relays_reads(self.nc):  # a tenant may not ask for stream info
            probe = self.names.history_subject(self.tenant, "=", "=")
            if not await auth.stream_answers(self.nc, history, probe):
                raise self._not_set_up(f"stream {history}")
            return
        try:
            await retry_transient(partial(self.nc.jetstream().stream_info, history), what=history)
        except JsNotFound as exc:
            raise self._not_set_up(f"stream {history}") from exc

    def _not_set_up(self, missing: str) -> NotSetUpError:
        return NotSetUpError(
            f"no Immortal hub has set up {display_urls(self.servers)} with prefix "
            f"{self.names.prefix!r} yet ({missing} not found): start one (`immortal hub`)"
        )

    def _reconnected(self) -> None:
        """What result() heard may have missed an append meanwhile: make it look again."""
        for updates in self._waiting:
            updates.put_nowait(b"")

    async def close(self) -> None:
        if self._nc is not None and self._own_nc:
            await self._nc.drain()
        self._nc = None

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise ImmortalError("client is not connected: use `async with Client(...)`")
        return self._nc

    async def start(
        self,
        workflow: Any,
        *args: Any,
        id: str | None = None,
        queue: str = "default",
        idempotency_key: str | None = None,
        id_reuse_policy: IdReusePolicy = IdReusePolicy.ALLOW_AFTER_CLOSE,
        execution_timeout: float | timedelta | None = None,
        run_timeout: float | timedelta | None = None,
        policy_input: Mapping[str, Any] | None = None,
    ) -> WorkflowHandle[Any]:
        """Start a run of ``workflow`` (a decorated function or its registered name).

        The start is durable once this returns; the run begins when a hub picks it up.
        Starting again with the same ``idempotency_key`` returns the first run, however much
        later. A caller-chosen ``id`` is guarded by ``id_reuse_policy``; by default a second
        start while the first run is open raises :class:`WorkflowAlreadyStartedError`.
        ``execution_timeout`` fails the run (``WorkflowTimeout``) if it is still open by then;
        ``run_timeout`` bounds one run (``WorkflowRunTimeout``): the same thing until a
        workflow continues as new, which starts a new run with its own clock.
        ``policy_input`` reveals fields of a sealed input to the tenant's policy, in
        plaintext (``{"amount": 12_000}``); the worker fails the run if they differ.
        """
        auth.require_write(self.security, "start workflows")
        if isinstance(workflow, str):
            name, result_type = workflow, None
        else:
            defn = workflow_definition(workflow)
            name, result_type = defn.name, defn.return_type
        encoded = encode_args(args)  # too large: raise before anything is claimed or said
        revealed = None if policy_input is None else revealed_fields(policy_input, encoded)
        workflow_id = id or str(uuid.uuid4())
        run_id = uuid.uuid4().hex
        claim = f"key:{idempotency_key}" if idempotency_key else (f"id:{id}" if id else None)
        if claim is not None:
            kv = await self._kv(self.names.bucket_idem)
            existing = await claim_start(
                self.nc, self.names, self.tenant, kv, claim, workflow_id, run_id,
                id_reuse_policy, idempotency_key,
            )  # fmt: skip
            if existing is not None:
                workflow_id, run_id, closed = existing
                if closed:
                    return WorkflowHandle(self, workflow_id, run_id, result_type)
                # Claimed, and the run is open or its start never reached a hub (the sender
                # failed or died first): send the start again under the claimed run id. A
                # hub applies a run's start once; for an open run it re-publishes what the
                # run is owed, which heals a task lost to an outage.
        await self._register_queue(queue)
        await self._warn_if_unserved(name, queue)
        codec = self.codec
        body = StartWorkflow(
            workflow_id=workflow_id,
            run_id=run_id,
            workflow_type=name,
            input=seal(codec, Binding(self.tenant, workflow_id, run_id, INPUT), encoded),
            execution_timeout=seconds(execution_timeout),
            run_timeout=seconds(run_timeout),
            policy_input=revealed,
        )
        await send_input(
            self.nc, self.names, self.tenant, queue, "start", encode(body), msg_id=f"start:{run_id}"
        )
        # Durable now: an input for the run (a signal, a cancel) may wait for its start.
        return WorkflowHandle(self, workflow_id, run_id, result_type, queued_on=queue)

    async def workers(self, queue: str | None = None) -> list[WorkerInfo]:
        """The live workers of this tenant (of one queue, if given), with their capabilities."""
        pattern = f"{self.tenant}.{encode_token(queue)}.*" if queue else f"{self.tenant}.>"
        bucket = self.names.bucket_workers
        found: dict[str, WorkerInfo] = {}
        for _, value in await retry_transient(
            partial(kv_scan, self.nc, bucket, pattern), what=bucket
        ):
            info = worker_info(unpack(value))
            found[info.worker] = info
        return sorted(found.values(), key=lambda w: w.worker)

    async def queues(self) -> list[QueueStats]:
        """Backlog and in-flight work of every queue of this tenant."""
        auth.refuse_unscopable(self.nc, "queue statistics read consumer info")  # before a read
        bucket = self.names.bucket_queues
        keys = await retry_transient(
            partial(kv_scan, self.nc, bucket, f"{self.tenant}.*"), what=bucket
        )
        queues = sorted({self.names.parse_queue_key(key)[1] for key, _ in keys})
        return await queue_stats(self.nc, self.names, self.tenant, queues)

    async def _warn_if_unserved(self, workflow_type: str, queue: str) -> None:
        """Say so when no live worker serves this type (the run still waits durably)."""
        seen_at, live = self._workers_seen.get(queue, (0.0, []))
        if time.monotonic() - seen_at > _WORKERS_FRESH_S:
            # One look at a time per queue: a burst of starts shares it instead of each
            # opening its own watch (an ordered consumer on the server) on imm-workers.
            looking = self._workers_looking.get(queue)
            if looking is None:
                looking = self._workers_looking[queue] = asyncio.ensure_future(self.workers(queue))
                looking.add_done_callback(lambda _: self._workers_looking.pop(queue, None))
            try:
                live = await asyncio.shield(looking)
            except Exception:  # discovery is advice; never let it block a start
                return
            self._workers_seen[queue] = (time.monotonic(), live)
        if not any(workflow_type in w.workflows for w in live):
            log.warning(
                "no live worker on queue %r serves workflow %r: the run waits until one does",
                queue,
                workflow_type,
            )

    async def events(
        self, *, from_seq: int = 1, follow: bool = False
    ) -> AsyncIterator[tuple[int, str, str, HistoryEvent]]:
        """The tenant's whole event stream: (stream sequence, workflow id, run id, event)
        for every run, in the order the hubs appended them; ``follow`` keeps it live."""
        names = self.names
        subject = f"{names.prefix}.hist.{self.tenant}.>"
        async for msg in tail(
            self.nc, names.stream_history, subject, from_seq=from_seq, follow=follow
        ):
            _, _, _, wf_token, run_token = msg.subject.split(".", 4)
            workflow_id, run_id = decode_token(wf_token), decode_token(run_token)
            for event in decode(Transition, msg.data).events:
                yield msg.seq, workflow_id, run_id, event

    async def set_retention(
        self,
        *,
        history: float | timedelta | None = None,
        logs: float | timedelta | None = None,
    ) -> Retention:
        """Keep this tenant's closed runs' history and logs this long (None: the streams'
        limits). Applies to runs that close from now on."""
        kv = await self._kv(self.names.bucket_policy)
        return await write_retention(kv, self.names, self.tenant, history, logs)

    async def retention(self) -> Retention:
        kv = await self._kv(self.names.bucket_policy)
        return await read_retention(kv, self.names, self.tenant)

    async def get_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle[Any]:
        """A handle on an existing run: the newest one of ``workflow_id`` if no run id.

        The newest run is the one with the newest history message: a run starts after its
        predecessor closed, and nothing is appended to a closed run. A workflow id with no
        history yet, whose start waits in ``IMM_IN`` for a hub, names that run: a signal or
        a cancel sent to it waits for the start.
        """
        if run_id is not None:
            return WorkflowHandle(self, workflow_id, run_id, None)
        for leader in (False, True):  # a start leaves IMM_IN once in history: look again
            newest = await self._newest_in_history(workflow_id, leader=leader)
            if newest is not None:
                return WorkflowHandle(self, workflow_id, newest, None, newest=True)
            queued = await self._queued_start(workflow_id)
            if queued is not None:
                run, queue = queued
                return WorkflowHandle(self, workflow_id, run, None, queued_on=queue, newest=True)
        raise WorkflowNotFoundError(f"no workflow {workflow_id!r}")

    async def _newest_in_history(self, workflow_id: str, *, leader: bool = False) -> str | None:
        history = self.names.stream_history
        subjects = self.names.workflow_history_filter(self.tenant, workflow_id)
        if leader and relays_reads(self.nc):
            # A tenant's connection may not ask the leader (the message-get API takes its
            # subject in the body): a direct get a moment later, from a replica caught up.
            await asyncio.sleep(0.05)
            leader = False
        newest = await retry_transient(
            partial(last_message, self.nc, history, subjects, leader=leader), what=subjects
        )
        return None if newest is None else decode_token(newest.subject.rsplit(".", 1)[1])

    async def _queued_start(
        self, workflow_id: str, run_id: str | None = None
    ) -> tuple[str, str] | None:
        """(run id, queue) of a start of the workflow id waiting in ``IMM_IN`` for a hub."""
        find = partial(find_queued_start, self.nc, self.names, self.tenant, workflow_id, run_id)
        return await retry_transient(find, what="queued starts")

    async def list_workflows(
        self,
        *,
        status: str | None = None,
        type: str | None = None,
        queue: str | None = None,
        started_after: datetime | None = None,
        started_before: datetime | None = None,
        limit: int = 50,
        page_token: str | None = None,
    ) -> RunPage:
        """This tenant's runs, newest first: open runs (newest started first), then closed
        ones (newest closed first). ``status`` is ``running``, ``closed``, or a closed
        status (``completed``, ``failed``, ``cancelled``, ``terminated``,
        ``continued_as_new``); ``type`` a workflow type. Pass the page's
        ``next_page_token`` to get the next page.

        >>> page = await client.list_workflows(status="failed", limit=20)
        """
        listing = partial(
            list_runs,
            self.nc,
            self.names,
            self.tenant,
            status=status,
            workflow_type=type,
            queue=queue,
            started_after=started_after,
            started_before=started_before,
            limit=limit,
            page_token=page_token,
        )
        return await retry_transient(listing, what="the runs index")

    async def workflow_runs(self, workflow_id: str) -> list[RunInfo]:
        """Every run of ``workflow_id`` that still has a history, newest started first: its
        continue-as-new chain (``continued_from``/``continued_to``) and the runs of earlier
        uses of the id."""
        return await runs_of(self.nc, self.names, self.tenant, workflow_id)

    async def _kv(self, bucket: str) -> KeyValue:
        """A bucket's handle, looked up once (the lookup is a request to the cluster)."""
        kv = self._buckets.get(bucket)
        if kv is None:
            try:
                kv = self._buckets[bucket] = await key_value(self.nc.jetstream(), bucket)
            except BucketNotFoundError as exc:
                raise self._not_set_up(f"bucket {bucket}") from exc
        return kv

    async def _register_queue(self, queue: str) -> None:
        # The hub watches this bucket and starts consuming the queue's inputs.
        if queue in self._known_queues:
            return
        kv = await self._kv(self.names.bucket_queues)
        key = self.names.queue_key(self.tenant, queue)
        await retry_transient(lambda: kv.put(key, b"client"), what=key)
        self._known_queues.add(queue)


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
