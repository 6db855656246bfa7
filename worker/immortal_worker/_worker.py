"""The worker: pulls tasks for its queues, runs workflow and activity code, reports back.

A worker pulls only as many tasks as it has free slots (that is the backpressure), holds
each under the task consumer's ack-wait (the lease, extended while the work is alive),
publishes its result to the hub's input stream and acks the task only after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from immortal._codec import pack
from immortal._connect import connect
from immortal._context import WorkflowInfo
from immortal._definitions import (
    ActivityDefinition,
    WorkflowDefinition,
    activity_definition,
    workflow_definition,
)
from immortal._errors import (
    LeaseMismatchError,
    NonDeterminismError,
    PayloadError,
    UnknownWorkflowTypeError,
    failure_from_exception,
)
from immortal._inputs import StaleInput, send_input
from immortal._jetstream import Puller, StoredMsg, create_consumer, read_subject
from immortal._locks import KeyedLocks
from immortal._logs import LogShipper
from immortal._names import InputKind, Names, TaskKind, validate_tenant
from immortal._transient import key_value, retry_transient
from immortal._wire import (
    ActivityResult,
    ActivityTask,
    AppliedTransition,
    Failure,
    Transition,
    WorkflowTask,
    WorkflowTaskResult,
    decode,
    encode,
)
from immortal.codec import KeyNotInRingError, PayloadCodec
from immortal.security.connection import ConnectSecurity
from immortal.security.errors import AuthError, RefusalReason
from immortal.security.signing import SignatureError
from immortal_worker._activities import ActivityRunner
from immortal_worker._instance import CacheStale, WorkflowInstance
from immortal_worker._pushed import PushedTask, Pushes
from immortal_worker._registration import registration, wait_for_streams, warn_of_conflicts

__all__ = ["Worker"]


log = logging.getLogger(__name__)
_RUN_LOGGERS = ("immortal.workflow", "immortal.activity")
DEFAULT_LEASE = 30.0  # seconds: a queue's lease when its first worker asks for none
_MAX_TASK_RETRY_DELAY = 60.0  # seconds: a failing workflow task is retried at least this often


class _Task(Protocol):
    """A workflow task's delivery: a JetStream message, or a task pushed over core NATS."""

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None: ...


def _check_queues(security: ConnectSecurity | None, queues: list[str]) -> None:
    """A worker's token names the queues it may serve: say so before the broker refuses."""
    principal = security.principal() if security is not None else None
    if principal is None:
        return
    refused = [q for q in queues if q not in principal.queues]
    if refused:
        raise AuthError(
            RefusalReason.PERMISSION,
            f"the token of {principal.subject!r} may serve queues "
            f"{', '.join(principal.queues) or 'none'}, not {', '.join(refused)}",
        )


class Worker:
    """Serves workflows and activities on one or more queues of a tenant.

    >>> worker = Worker("nats://127.0.0.1:4222", queues=["orders"],
    ...                 workflows=[place_order], activities=[charge])
    >>> await worker.run()
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        queues: Sequence[str] = ("default",),
        workflows: Iterable[Callable[..., Any]] = (),
        activities: Iterable[Callable[..., Any]] = (),
        tenant: str | None = None,
        prefix: str = "imm",
        worker_id: str | None = None,
        workflow_slots: int = 256,
        activity_slots: int = 64,
        lease: float | None = None,
        max_cached_runs: int = 1000,
        workflow_task_retry_delay: float = 5.0,
        liveness_ttl: float = 2.0,
        release_after: float = 30.0,
        nc: NATS | None = None,
        security: ConnectSecurity | None = None,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.servers = servers
        self.codec = codec  # seals the payloads this worker's code makes, opens history's
        self.security = security
        # With a token, the broker lets this worker create and pull only the queues' shared
        # consumers (names it can compute), not a consumer of its own for cached runs'
        # workflow tasks; those come pushed over core NATS, or from the shared consumer.
        self.sticky = security is None or security.token is None
        self.queues = list(queues)
        self.tenant = validate_tenant(
            security.tenant_for(tenant) if security is not None else tenant or "default"
        )
        _check_queues(security, self.queues)
        self.names = Names(prefix)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.instance = uuid.uuid4().hex
        self.workflows: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            d = workflow_definition(wf)
            self.workflows[d.name] = d
        self.activities: dict[str, ActivityDefinition] = {}
        for act in activities:
            a = activity_definition(act)
            self.activities[a.name] = a
        self.workflow_slots = workflow_slots
        self.activity_slots = activity_slots
        # Seconds a task stays this worker's once it falls silent (None: the queue's lease,
        # which the first worker to serve the queue sets). See _lease_of.
        self.lease = lease
        self._ack_waits: list[float] = []  # the leases of the queues' consumers it pulls
        self.workflow_task_retry_delay = workflow_task_retry_delay
        # A run that only waits on a timer at least this far off is dropped from memory.
        self.release_after = release_after
        # A dead worker is detected when its key in imm-workers expires: within this many
        # seconds of its last renewal (renewed 4 times per TTL). Whole seconds (Nats-TTL).
        # No longer than the lease: a lease shorter than the TTL is honoured by the key.
        self.liveness_ttl = max(1.0, float(round(min(liveness_ttl, lease or liveness_ttl))))
        self._pull_expires = max(0.5, min(5.0, self.liveness_ttl / 2))
        self._nc = nc
        self._own_nc = nc is None
        self._cache: OrderedDict[str, WorkflowInstance] = OrderedDict()
        self._max_cached = max_cached_runs
        self._run_locks = KeyedLocks()
        self._executor = ThreadPoolExecutor(
            max_workers=activity_slots, thread_name_prefix="activity"
        )
        self._pullers: list[Puller] = []
        self._poll_tasks: list[asyncio.Task[None]] = []
        self._held: dict[int, Msg] = {}
        self._running_attempts: dict[int, str] = {}  # of the held tasks, activity attempts
        self._held_changed = asyncio.Event()
        self._running = False
        self.evictions = 0  # runs dropped from memory (cache pressure, staleness, sleeps)
        self.released = 0  # of those, runs dropped because they sleep on a durable timer
        self.replays = 0

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "worker not started"
        return self._nc

    @property
    def taking_work(self) -> bool:
        """Started past the waits for NATS and for a hub: a stop must now hand work back."""
        return self._running

    async def start(self) -> None:
        """Connect, wait for a hub's streams, serve; cancelled while waiting, it leaves
        nothing open."""
        if self._nc is None:
            self._nc = await connect(
                self.servers, name=f"immortal-worker-{self.worker_id}", security=self.security
            )
        self.js = self.nc.jetstream()
        try:  # before anything runs: a lease the queues cannot honour refuses the start
            await wait_for_streams(self)
            kinds: list[TaskKind] = ["wf"] if self.workflows else []
            kinds += ["act"] if self.activities else []
            consumers = [
                (queue, kind, await self._consumers(queue, kind))
                for queue in self.queues
                for kind in kinds
            ]
        except BaseException:
            if self._own_nc:
                await self.nc.close()
                self._nc = None
            raise
        self._running = True
        self._lease_ticker = asyncio.create_task(self._extend_leases())
        self._activity_runner = ActivityRunner(
            self.nc,
            self.names,
            self.tenant,
            self.worker_id,
            self.activities,
            self._executor,
            hold=self._lease,
            send=self._send,
            report_result=self._report_result,
            codec=self.codec,
        )
        # Log lines of this worker's runs go to IMM_LOGS (ctx.log, immortal.activity.logger).
        self.logs = LogShipper(self.js, self.names, self.tenant, self.worker_id, self.codec)
        for name in _RUN_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
            logger.addHandler(self.logs)
        self._workers_kv = await key_value(self.js, self.names.bucket_workers)
        await warn_of_conflicts(self)
        await self._register()
        self._liveness = asyncio.create_task(self._stay_registered())
        self._pushes = Pushes(
            self.nc,
            self.names,
            self.tenant,
            self.worker_id,
            self.instance,
            self.workflow_slots,
            self._pushed,
        )
        queues_kv = await key_value(self.js, self.names.bucket_queues)
        for queue in self.queues:
            key = self.names.queue_key(self.tenant, queue)
            await retry_transient(partial(queues_kv.put, key, b"worker"), what=key)
        for queue, kind, durables in consumers:
            self._pull(kind, durables)
            if kind == "wf":
                await self._pushes.serve(queue)
        log.info(
            "worker %s serving %s/%s: workflows %s, activities %s",
            self.worker_id, self.tenant, ",".join(self.queues),
            sorted(self.workflows), sorted(self.activities),
        )  # fmt: skip

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work, let in-flight tasks finish within ``grace``, hand the rest back
        (NAK: another worker gets them at once), deregister, disconnect."""
        self._running = False
        for t in self._poll_tasks:
            t.cancel()
        await asyncio.gather(*self._poll_tasks, return_exceptions=True)
        await asyncio.gather(*(p.drain(grace) for p in self._pullers), self._pushes.stop(grace))
        unfinished = list(self._held.values())
        for msg in unfinished:
            with contextlib.suppress(Exception):
                await msg.nak()
        for puller in self._pullers:
            await puller.cancel()  # their results, if any came now, would be late and fenced
        if unfinished:
            log.warning(
                "worker %s handed back %d unfinished task(s)", self.worker_id, len(unfinished)
            )
        self._lease_ticker.cancel()  # only now: leases stay held while in-flight work drains
        for name in _RUN_LOGGERS:
            logging.getLogger(name).removeHandler(self.logs)
        await self.logs.aclose()
        self._liveness.cancel()
        await self._deregister()  # hubs now hand this worker's sticky tasks to the queue
        for queue in self.queues if self.workflows and self.sticky else []:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(
                    self.names.stream_tasks,
                    self.names.sticky_consumer(self.tenant, queue, self.worker_id),
                )
        for inst in self._cache.values():
            inst.close()
        self._cache.clear()
        if self._nc is not None and self._own_nc:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._nc = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _consumers(self, queue: str, kind: TaskKind) -> list[str]:
        """Create (or find) the task consumers this worker pulls for ``queue``'s ``kind``
        of tasks; returns their names."""
        # (consumer, subject, seconds it may stay unused before the server removes it)
        subjects: list[tuple[str, str, float | None]] = [
            (
                self.names.task_consumer(self.tenant, queue, kind),
                self.names.task_subject(self.tenant, queue, kind),
                None,
            )
        ]
        if kind == "wf" and self.sticky:  # and its cached runs' tasks (hub/_sticky.py)
            subjects.append(
                (
                    self.names.sticky_consumer(self.tenant, queue, self.worker_id),
                    self.names.sticky_subject(self.tenant, queue, self.worker_id),
                    3600.0,  # a dead worker's own consumer goes after an hour unused
                )
            )
        for durable, subject, inactive in subjects:
            config = ConsumerConfig(
                name=durable,  # the filtered create: the form the broker can scope
                durable_name=durable,
                filter_subject=subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.lease or DEFAULT_LEASE,
                max_deliver=-1,
                max_ack_pending=100_000,
                inactive_threshold=inactive,
            )
            if inactive is not None:  # this worker's own consumer: its lease, whatever it was
                await self.js.add_consumer(self.names.stream_tasks, config)
            else:  # the queue's, shared: never changed by a worker (see _lease_of)
                info = await create_consumer(self.nc, self.names.stream_tasks, config)
                self._ack_waits.append(self._lease_of(queue, durable, info))
        return [durable for durable, _, _ in subjects]

    def _pull(self, kind: TaskKind, durables: list[str]) -> None:
        if kind == "wf":
            slots, handle = self.workflow_slots, self._workflow_task
        else:
            slots, handle = self.activity_slots, self._activity_runner.handle
        for durable in durables:
            # A pull request open while this worker is frozen would hand it tasks that nobody
            # knows it holds (they wait out its lease): it expires before the liveness key.
            puller = Puller(
                self.nc,
                self.names.stream_tasks,
                durable,
                slots,
                self._guarded(handle),
                expires=self._pull_expires,
            )
            self._pullers.append(puller)
            self._poll_tasks.append(asyncio.create_task(puller.run()))

    def _lease_of(self, queue: str, durable: str, info: ConsumerInfo) -> float:
        """The lease of a queue's task consumer (its ack-wait, which the server applies to
        every worker of the queue), checked against the lease this worker asked for.

        A worker never changes it: one started with another ``--lease`` would otherwise
        set it for every worker of the queue, and healthy workers with longer tasks would
        lose them to redelivery. A shorter lease is honoured by this worker alone: it
        extends its tasks more often and its liveness key, whose expiry hands its tasks
        back, lives no longer than its lease. A longer one cannot be: the server hands a
        silent worker's tasks on after the queue's ack-wait.
        """
        ack_wait = float(info.config.ack_wait or DEFAULT_LEASE)
        if self.lease is not None and self.lease > ack_wait + 1e-3:
            raise LeaseMismatchError(
                f"this worker asked for a lease of {self.lease:g} s, but queue {queue!r} of "
                f"tenant {self.tenant!r} has a lease of {ack_wait:g} s (the ack-wait of its "
                f"consumer {durable}, set when the queue was first served, and kept for every "
                "worker of the queue): the server would hand this worker's tasks to another "
                f"after {ack_wait:g} s of silence. Start it with --lease {ack_wait:g} or less, "
                "or without --lease; an operator may change the consumer's ack-wait"
            )
        return ack_wait

    @staticmethod
    def _guarded(handle: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def guarded(msg: Msg) -> None:
            try:
                await handle(msg)
            except Exception:
                log.exception(
                    "task %s failed in the worker runtime; it will be redelivered", msg.subject
                )
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)

        return guarded

    # -- leases and liveness ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lease(self, msg: Msg, running: str | None = None) -> AsyncIterator[None]:
        """Hold the task's lease for as long as the block runs (see ``_extend_leases``);
        ``running`` names the activity attempt it is, for the registration."""
        key = id(msg)
        self._held[key] = msg
        if running is not None:
            self._running_attempts[key] = running
        self._held_changed.set()
        try:
            yield
        finally:
            self._held.pop(key, None)
            self._running_attempts.pop(key, None)
            self._held_changed.set()

    def registration(self) -> dict[str, Any]:
        """What ``imm-workers`` says about this worker (discovery and liveness)."""
        return registration(self)

    async def _register(self) -> None:
        data = pack(self.registration())
        for queue in self.queues:
            key = self.names.worker_key(self.tenant, queue, self.worker_id)
            # A KV put with a per-message TTL (nats-py's put has no TTL parameter).
            subject = self.names.kv_subject(self.names.bucket_workers, key)
            await self.js.publish(subject, data, msg_ttl=self.liveness_ttl)

    async def _stay_registered(self) -> None:
        """Renew 4 times per TTL, and soon after the held tasks change (at most 10 times/s),
        so that a hub knows which tasks to hand back if this worker dies."""
        renewed = True
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.liveness_ttl / 4):
                    await self._held_changed.wait()
                await asyncio.sleep(0.1)  # coalesce a burst of changes into one write
            self._held_changed.clear()
            try:
                await self._register()
                renewed = True
            except Exception as exc:  # a reconnect, an election: the next renewal will do
                if renewed:
                    log.warning(
                        "worker %s could not renew its registration: %r", self.worker_id, exc
                    )
                renewed = False

    async def _deregister(self) -> None:
        for queue in self.queues:
            with contextlib.suppress(Exception):
                await self._workers_kv.delete(
                    self.names.worker_key(self.tenant, queue, self.worker_id)
                )

    async def _extend_leases(self) -> None:
        """One ticker for every held task: ``in_progress`` each third of the shortest lease
        that applies (this worker's, and each queue's consumer's)."""
        while True:
            await asyncio.sleep(min([self.lease or DEFAULT_LEASE, *self._ack_waits]) / 3)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    # -- workflow tasks -----------------------------------------------------------------

    async def _workflow_task(self, msg: Msg) -> None:
        task = decode(WorkflowTask, msg.data)
        delivery = msg.metadata.num_delivered or 1
        async with self._run_locks.hold(task.run_id), self._lease(msg):
            await self._advance(msg, task, delivery)

    async def _pushed(self, task: WorkflowTask, pushed: PushedTask) -> None:
        """A workflow task pushed over core NATS (``_pushed``): delivery 0, no lease."""
        async with self._run_locks.hold(task.run_id):
            await self._advance(pushed, task, 0)

    async def _advance(self, msg: _Task, task: WorkflowTask, delivery: int) -> None:
        defn = self.workflows.get(task.workflow_type)
        if defn is None:
            err = UnknownWorkflowTypeError(
                f"workflow type {task.workflow_type!r} is not registered on worker "
                f"{self.worker_id} (registered: {', '.join(sorted(self.workflows)) or 'none'})"
            )
            await self._fail_task(msg, task, delivery, err, through=0)
            return
        inst = self._cache.pop(task.run_id, None)
        try:
            if inst is None:
                inst = await self._load(defn, task)
            else:
                await self._read_new(inst, task)
            if inst.has_completed(task.wft):
                await msg.ack()  # a redelivered task some worker already completed
                self._remember(inst)
                return
            try:
                commands, through = inst.activate(task.wft)
            except CacheStale:
                inst.close()
                self.evictions += 1
                inst = await self._load(defn, task)
                commands, through = inst.activate(task.wft)
        except (NonDeterminismError, KeyNotInRingError) as exc:  # retried: fixed code, the key
            log.error("run %s of %s: %s", task.run_id, task.workflow_id, exc)
            if inst is not None:
                inst.close()
            await self._fail_task(msg, task, delivery, exc, through=0)
            return
        except BaseException:
            if inst is not None:
                inst.close()  # dropped: unwind its code (a redelivery replays the run)
            raise
        body = WorkflowTaskResult(
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            wft=task.wft,
            through=through,
            result_id=f"{task.run_id}:{task.wft}:{delivery}:{self.worker_id}",
            worker=self.worker_id,
            commands=commands,
        )
        await self._complete(msg, task, inst, body)

    async def _complete(
        self, msg: _Task, task: WorkflowTask, inst: WorkflowInstance, body: WorkflowTaskResult
    ) -> None:
        """Report the activation's commands, ack the task, then keep the run or let it go."""
        if isinstance(msg, PushedTask):
            msg.reporting()  # waiting for a hub now, not working: its slot is free
        try:
            applied = await self._report(task, body)
        except StaleInput as exc:  # the run closed, or its task was completed elsewhere
            log.info("run %s: workflow task %d no longer open: %s", task.run_id, task.wft, exc)
            inst.close()
            await msg.ack()
            return
        except BaseException:
            inst.close()  # dropped: unwind its code (a redelivery replays the run)
            raise
        await msg.ack()
        if applied is not None and applied.prev_seq == inst.last_seq:
            inst.learn(applied.events, applied.seq)  # what the hub appended: no read next time
        self._keep(inst)

    def _keep(self, inst: WorkflowInstance) -> None:
        """After a workflow task: close a finished run, release one that only sleeps, cache
        the others."""
        if inst.finished:
            inst.close()
        elif inst.releasable(round(self.release_after * 1000)):
            # It only waits on a durable timer: hold nothing for it. The firing schedules a
            # workflow task that any worker takes, replaying the run from its history.
            inst.close()
            self.evictions += 1
            self.released += 1
            info = inst.info
            log.info("run %s of %s sleeps: released from memory", info.run_id, info.workflow_id)
        else:
            self._remember(inst)

    async def _report_result(self, task: ActivityTask, body: ActivityResult) -> None:
        """Send an activity's result. If this worker holds the run, it first runs the
        workflow code on with the result and sends the commands along (``RunAhead``): when
        the hub finds the run as this worker saw it, it records the result and that
        workflow task in one transition, sparing the task's push, its round trip and an
        append. Attempts whose events the worker never sees (retries, heartbeats, reported
        starts) would only be refused, so they go without."""
        quiet = task.attempt == 1 and task.heartbeat_timeout is None
        if body.failure is not None or not quiet or task.schedule_to_start is not None:
            await self._send(task.workflow_queue, "act", encode(body), body.result_id)
            return
        async with self._run_locks.hold(task.run_id):
            inst = self._cache.pop(task.run_id, None)
            mark = len(inst.events) if inst is not None else 0
            if inst is not None and inst.events and not inst.finished:
                body.then = inst.run_ahead(task.scheduled_id, body)
            try:
                reply = await self._send(task.workflow_queue, "act", encode(body), body.result_id)
            except BaseException:
                if inst is not None:
                    inst.close()  # dropped: unwind its code (the next task replays the run)
                raise
            if inst is None:
                return
            if len(inst.events) == mark:
                self._remember(inst)  # it did not run ahead: as it was
                return
            applied = decode(AppliedTransition, reply) if reply and body.then else None
            if (
                applied is None
                or applied.prev_seq != inst.last_seq
                or not inst.has_completed(body.then.wft if body.then else 0, applied.events)
            ):
                inst.close()  # it ran ahead of a history that went another way: replay it
                self.evictions += 1
                return
            inst.learn(applied.events, applied.seq, replacing_from=mark)
            self._keep(inst)

    async def _load(self, defn: WorkflowDefinition, task: WorkflowTask) -> WorkflowInstance:
        info = WorkflowInfo(
            tenant=self.tenant,
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            workflow_type=task.workflow_type,
            queue=task.queue,
        )
        inst = WorkflowInstance(defn, info, self.worker_id, self.activities, self.codec)
        self.replays += 1
        await self._read_new(inst, task)
        return inst

    async def _read_new(self, inst: WorkflowInstance, task: WorkflowTask) -> None:
        """Read the history past what ``inst`` has seen, at least up to the task's transition."""
        if task.events and task.prev_seq == inst.last_seq:
            inst.learn(task.events, task.hist_seq)  # the task carries exactly what is new
            return
        subject = self.names.history_subject(self.tenant, task.workflow_id, task.run_id)
        for _ in range(50):
            stored = await retry_transient(
                lambda: self._read_history(subject, inst.last_seq + 1), what=subject
            )
            for msg in stored:
                inst.learn(decode(Transition, msg.data).events, msg.seq)
            if inst.last_seq >= task.hist_seq:
                return
            await asyncio.sleep(0.05)  # a replica behind the leader: give it a moment
        raise RuntimeError(f"history of {subject} never reached sequence {task.hist_seq}")

    async def _read_history(self, subject: str, from_seq: int) -> list[StoredMsg]:
        stream = self.names.stream_history
        return [m async for m in read_subject(self.nc, stream, subject, from_seq=from_seq)]

    def _remember(self, inst: WorkflowInstance) -> None:
        self._cache[inst.info.run_id] = inst
        while len(self._cache) > self._max_cached:
            _, old = self._cache.popitem(last=False)
            old.close()
            self.evictions += 1

    async def _fail_task(
        self, msg: _Task, task: WorkflowTask, delivery: int, exc: Exception, *, through: int
    ) -> None:
        """Record the failure in history and hand the task back for a later retry, backing
        off with each delivery up to a minute; a task no longer open is dropped."""
        body = WorkflowTaskResult(
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            wft=task.wft,
            through=through,
            result_id=f"{task.run_id}:{task.wft}:{delivery}:{self.worker_id}:failed",
            worker=self.worker_id,
            failure=Failure.model_validate(failure_from_exception(exc)),
        )
        try:
            await self._report(task, body)
        except StaleInput as exc:  # closed (cancelled, terminated) or moved on meanwhile
            log.info("run %s: dropping workflow task %d: %s", task.run_id, task.wft, exc)
            await msg.ack()
            return
        backoff = self.workflow_task_retry_delay * 2 ** max(delivery - 1, 0)
        await msg.nak(delay=min(backoff, _MAX_TASK_RETRY_DELAY))

    async def _report(
        self, task: WorkflowTask, body: WorkflowTaskResult
    ) -> AppliedTransition | None:
        reply = await self._send(task.queue, "wft", encode(body), body.result_id)
        return decode(AppliedTransition, reply) if reply else None

    async def _send(self, queue: str, kind: InputKind, data: bytes, msg_id: str) -> bytes | None:
        try:
            return await send_input(
                self.nc, self.names, self.tenant, queue, kind, data, msg_id=msg_id
            )
        except (PayloadError, SignatureError) as exc:  # dead-lettered, with the reason
            log.error("hub rejected %s result %s: %s", kind, msg_id, exc)
            return None
