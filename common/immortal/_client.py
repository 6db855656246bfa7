"""The client: start workflows, await their results, read their state and history.

>>> async with Client("nats://127.0.0.1:4222") as client:
...     handle = await client.start(place_order, order, id="order-42")
...     receipt = await handle.result()
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.errors import BucketNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._claims import IdReusePolicy, claim_start
from immortal._codec import encode_args, unpack
from immortal._connect import connect, display_urls
from immortal._definitions import workflow_definition
from immortal._dlq import DeadLetters
from immortal._errors import (
    ImmortalError,
    NotSetUpError,
    WorkflowNotFoundError,
)
from immortal._handle import WorkflowHandle
from immortal._inputs import find_queued_start, send_input
from immortal._jetstream import (
    kv_scan,
    last_message,
    require_jetstream,
    tail,
)
from immortal._names import Names, decode_token, encode_token, validate_tenant
from immortal._queues import QueueStats, queue_stats
from immortal._revealed import revealed_fields
from immortal._schedules import Schedules
from immortal._tenants import Retention, read_retention, write_retention
from immortal._timers import seconds
from immortal._transient import key_value, retry_transient
from immortal._wire import (
    HistoryEvent,
    StartWorkflow,
    Transition,
    decode,
    encode,
)
from immortal._workers import WorkerInfo, worker_info
from immortal.codec import Binding, PayloadCodec
from immortal.codec._fields import INPUT
from immortal.codec._sealing import seal
from immortal.runs import (
    RunInfo,
    RunPage,
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
_LOOK_S = 1.0  # the longest start() waits for that look (advice, see _warn_if_unserved)

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
        self._workers_looking: dict[str, asyncio.Future[list[WorkerInfo] | None]] = {}

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
        return await retry_transient(
            partial(self._scan_workers, pattern), what=self.names.bucket_workers
        )

    async def _scan_workers(self, pattern: str) -> list[WorkerInfo]:
        """One read of the live workers whose keys match ``pattern``, one entry each."""
        found: dict[str, WorkerInfo] = {}
        for _, value in await kv_scan(self.nc, self.names.bucket_workers, pattern):
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
        """Say so when no live worker serves this type (the run still waits durably).
        Advice only: a start waits at most ``_LOOK_S`` for it, and a look that takes longer
        goes on and serves the next start."""
        seen_at, live = self._workers_seen.get(queue, (-_WORKERS_FRESH_S, []))
        if time.monotonic() - seen_at > _WORKERS_FRESH_S:
            # One look at a time per queue: a burst of starts shares it instead of each
            # opening its own watch (an ordered consumer on the server) on imm-workers.
            looking = self._workers_looking.get(queue)
            if looking is None:
                looking = self._workers_looking[queue] = asyncio.ensure_future(
                    self._look_at_workers(queue)
                )
                looking.add_done_callback(lambda _: self._workers_looking.pop(queue, None))
            try:
                found = await asyncio.wait_for(asyncio.shield(looking), _LOOK_S)
            except Exception:  # slow or failed: never let advice hold a start
                return
            if found is None:
                return  # no hub answered the look (said once, in _look_at_workers)
            live = found
        if not any(workflow_type in w.workflows for w in live):
            log.warning(
                "no live worker on queue %r serves workflow %r: the run waits until one does",
                queue,
                workflow_type,
            )

    async def _look_at_workers(self, queue: str) -> list[WorkerInfo] | None:
        """The live workers of ``queue``, read once (no retries: this is advice), kept for
        ``_WORKERS_FRESH_S``; None when no hub answered the read (auth on, a client reads
        them through a hub's relay), which is itself worth saying."""
        try:
            live = await self._scan_workers(f"{self.tenant}.{encode_token(queue)}.*")
        except NoRespondersError:
            self._workers_seen[queue] = (time.monotonic(), [])
            log.warning(
                "no hub answered (with auth on, a client reads through a hub): the run "
                "waits in IMM_IN until one runs (`immortal hub`)"
            )
            return None
        self._workers_seen[queue] = (time.monotonic(), live)
        return live

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
