"""The hub: consumes ``IMM_IN`` per tenant queue and moves runs forward.

Per input: load the run (cache, else one direct get of the history subject's last
message), apply it (``_transitions``), append one history message guarded by
``Nats-Expected-Last-Subject-Sequence``, update the runs index, publish the tasks it asks
for with deterministic ``Nats-Msg-Id``s, and only then ack the input. A crash anywhere
in between redelivers the input, which then changes nothing twice. The cache is only a
cache: a hub that lost the optimistic race reloads, so several hubs can share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter, OrderedDict
from collections.abc import Mapping
from functools import partial
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.metrics import MeterProvider

from immortal._connect import connect, display_urls
from immortal._errors import PayloadError
from immortal._jetstream import (
    Puller,
    create_consumer,
    require_jetstream,
)
from immortal._locks import KeyedLocks
from immortal._names import Names
from immortal._transient import is_transient, key_value
from immortal._wire import (
    RunState,
    TimerFired,
    now_ms,
)
from immortal.security import ConnectSecurity
from immortal_hub._dead_letters import keep_dead_letter
from immortal_hub._dead_workers import WorkerWatch
from immortal_hub._guard import InputGuard
from immortal_hub._limits import Admission, TenantLimits
from immortal_hub._local_timers import LocalTimers
from immortal_hub._metrics import HubMetrics
from immortal_hub._push import Pushes
from immortal_hub._resources import ResourceSettings, ensure_resources
from immortal_hub._retention import Retentions
from immortal_hub._rpc_inputs import RpcInputs
from immortal_hub._runs_index import LIST_AFTER_S, RunsIndex
from immortal_hub._signatures import SignatureRefused
from immortal_hub._transitions import (
    AwaitingStart,
    InvalidInput,
    StaleAttempt,
)
from immortal_hub._writes import WriteGate
from immortal_hub.policy import PolicyGate, firing_refused
from immortal_hub.schedules import ScheduleChanges, scheduled_start

__all__ = ["Hub"]

log = logging.getLogger(__name__)

_START_WAIT_S = 0.5  # between a waiting input's deliveries (see _await_start)
_POISON_DELIVERIES = 10
_EARLY_FIRING_MS = 2  # a durable timer's firing this much before its due time waits
_LIGHT_TENANT = 2  # a tenant holding this few inputs: its writes never wait (_writes)


class Hub(RpcInputs):
    """One hub process. Run as many as you like against the same NATS.

    ``max_in_flight`` bounds the inputs this hub holds (queued or being applied), shared
    fairly among the tenants that have work; ``concurrency`` of them are applied at once,
    the slots going round-robin to tenants; ``tenant_limits`` caps tenants further (key
    ``"*"``: every tenant without its own entry). See ``_limits``. ``start_wait``: seconds
    a signal (or cancel) for a run whose start is durable but not yet applied waits for the
    start before it is dead-lettered.

    >>> hub = Hub(url, tenant_limits={"*": TenantLimits(max_in_flight=100, rate=500)})
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = "imm",
        hub_id: str | None = None,
        settings: ResourceSettings | None = None,
        max_in_flight: int = 1024,
        concurrency: int = 64,
        max_writes: int = 8,
        tenant_limits: Mapping[str, TenantLimits] | None = None,
        ack_wait: float = 5.0,
        start_wait: float = 60.0,
        list_after: float = LIST_AFTER_S,
        cache_size: int = 10_000,
        local_timer_horizon: float = 300.0,
        meter_provider: MeterProvider | None = None,
        metrics_interval: float = 5.0,
        nc: NATS | None = None,
        security: ConnectSecurity | None = None,
        policy_engine: str = "builtin",
        require_signatures: bool = False,
    ) -> None:
        self.servers = servers
        self.security = security  # auth on: its token (role hub) and TLS (see _guard)
        self.policy_engine = policy_engine  # the engine tenants' policies decide with
        self.require_signatures = require_signatures  # for every tenant (see _signatures)
        self.names = Names(prefix)
        self.hub_id = hub_id or f"hub-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.settings = settings or ResourceSettings()
        self.ack_wait = ack_wait
        self.start_wait = start_wait
        self.list_after = list_after  # a run is listed as open once it lived this long
        self._nc = nc
        self._own_nc = nc is None
        self.max_in_flight = max_in_flight
        self.admission = Admission(tenant_limits, total=max_in_flight, slots=concurrency)
        self._writes = WriteGate(max_writes, self.admission.in_flight, light=_LIGHT_TENANT)
        self.refused: Counter[str] = Counter()  # busy replies per tenant, for tests
        self._rpc_tasks: set[asyncio.Task[None]] = set()
        self._pullers: set[Puller] = set()
        self._cache: OrderedDict[str, tuple[RunState, int, bytes]] = OrderedDict()
        self._cache_size = cache_size
        self._locks = KeyedLocks()
        self._queues: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._running = False
        self.transitions = 0  # appended transitions, for tests and metrics
        # Timers due within local_timer_horizon seconds are also fired from this hub's clock.
        self._timers = LocalTimers(
            self.names, local_timer_horizon, self._on_timer, self._purge_timer, self._spawn
        )
        self._metrics = HubMetrics(
            self.names,
            queues=lambda: list(self._queues),
            in_flight=self.admission.by_tenant,
            meter_provider=meter_provider,
            interval=metrics_interval,
        )

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "hub not started"
        return self._nc

    async def start(self) -> None:
        if self._nc is None:
            self._nc = await connect(
                self.servers, name=self.hub_id, security=self.security, relay_reads=False
            )
        self.js = self.nc.jetstream()
        secure = self.security is not None and self.security.token is not None
        self._guard = InputGuard(
            self.nc,
            self.names,
            secure=secure,
            hub_id=self.hub_id,
            require_signatures=self.require_signatures,
            duplicate_window=self.settings.duplicate_window,
        )
        await require_jetstream(self.nc, display_urls(self.servers))
        await ensure_resources(self.js, self.names, self.settings)
        self.policy = await PolicyGate.open(  # tenants' policies, decided before inputs apply
            self.nc,
            self.names,
            self.hub_id,
            engine=self.policy_engine,
            secure=secure,
            claims=self._guard.claims,
            load_state=self._run_state,
            apply_refused=self._apply,
            spawn=self._spawn,
        )
        self._guard.reads.policy = self.policy.read_refusal
        # Key registries, then the read relay (says so if auth is off): before any input.
        await self._guard.start()
        self._schedules = ScheduleChanges(
            self.nc,
            self.names,
            self.hub_id,
            policy=self.policy,
            claims=self._guard.claims,
            signatures=self._guard.signatures,
        )
        await self._schedules.start()
        self._runs = RunsIndex(
            self.nc,
            self.names,
            self._write,
            list_after=self.list_after,
            hold=lambda: self._pushes.hold(),
            release=lambda token: self._pushes.release(token),
        )
        self._retentions = Retentions(
            self.nc, self.names, self._runs, self._publish_emission, self._forget
        )
        self._queues_kv = await key_value(self.js, self.names.bucket_queues)
        self._running = self._timers.running = True
        self._workers = WorkerWatch(
            self.nc, self.names, self._metrics, lambda: self._running, self._spawn
        )
        self._pushes = Pushes(
            self.nc,
            self.names,
            self.hub_id,
            self._publish_emission,
            self._workers.live,
            self._runs.list_if_open,
        )
        await self._pushes.start()
        if self._runs.lazy:
            self._spawn(self._runs.sweep(lambda: self._running))
        self._rpc_sub = await self.nc.subscribe(
            f"{self.names.prefix}.rpc.>", queue=f"{self.names.prefix}-hubs", cb=self._on_rpc
        )
        self._spawn(self._watch_queues())
        workers_kv = await key_value(self.js, self.names.bucket_workers)
        self._spawn(self._workers.watch(workers_kv, self._pushes))
        self._metrics.start(self.js)
        log.info("hub %s serving %s", self.hub_id, display_urls(self.servers))

    async def stop(self) -> None:
        """Stop fetching, finish what is in flight, disconnect."""
        self._running = False
        self._timers.stop()
        with contextlib.suppress(Exception):
            await self._rpc_sub.unsubscribe()
        await self._guard.stop()
        await self._schedules.stop()
        if self._rpc_tasks:
            await asyncio.wait(self._rpc_tasks, timeout=10)
        # Pullers leave the set as their queue task ends: keep hold of them to drain them.
        pullers = list(self._pullers)
        tasks = [*self._queues.values(), *self._background]
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a task stuck in a call that ignores its cancel must not hold the stop
            _, stuck = await asyncio.wait(tasks, timeout=10)
            for task in stuck:
                log.warning("hub %s: %s did not stop within 10 s", self.hub_id, task.get_coro())
        await asyncio.gather(*(p.drain(10.0) for p in pullers))
        with contextlib.suppress(Exception):
            await self._runs.flush()  # its young runs listed (else another hub lists them)
        await self._pushes.stop()
        await self.policy.stop()
        await self._metrics.stop()
        if self._nc is not None and self._own_nc:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._nc = None

    @property
    def handed_back(self) -> int:
        """Tasks of dead workers this hub handed back (for tests)."""
        return self._workers.handed_back

    async def run(self) -> None:
        """Start and serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _run_state(self, tenant: str, workflow_id: str, run_id: str) -> RunState | None:
        subject = self.names.history_subject(tenant, workflow_id, run_id)
        return (await self._load(subject, fresh=False))[0]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- tenant queues ------------------------------------------------------------------

    async def _watch_queues(self) -> None:
        """Serve every queue in the registry; the watch is a hint, the listing the truth."""
        while self._running:
            with contextlib.suppress(Exception):
                for key in await self._queues_kv.keys():
                    self._serve(key)
            try:
                watcher = await self._queues_kv.watchall(ignore_deletes=True)
                try:
                    while self._running:
                        entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                        if entry is not None:
                            self._serve(entry.key)
                finally:
                    await watcher.stop()  # type: ignore[no-untyped-call]
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:  # reconnects, server restarts: list again
                log.debug("queue watch restarted: %s", exc)
                await asyncio.sleep(1.0)

    def _serve(self, key: str) -> None:
        tenant, queue = self.names.parse_queue_key(key)
        if (tenant, queue) not in self._queues:
            log.info("hub %s now serves queue %s/%s", self.hub_id, tenant, queue)
            self._queues[(tenant, queue)] = asyncio.create_task(self._consume(tenant, queue))

    async def _consume(self, tenant: str, queue: str) -> None:
        """Serve one tenant queue: its durable inputs and its fired timers."""
        await asyncio.gather(
            self._consume_stream(
                tenant,
                queue,
                self.names.stream_in,
                self.names.hub_consumer(tenant, queue),
                self.names.input_filter(tenant, queue),
            ),
            self._consume_stream(
                tenant,
                queue,
                self.names.stream_timers,
                self.names.timer_consumer(tenant, queue),
                self.names.fired_subject(tenant, queue),
            ),
        )

    async def _consume_stream(
        self, tenant: str, queue: str, stream: str, durable: str, subject_filter: str
    ) -> None:
        while self._running:
            puller = None
            try:
                await self._ensure_consumer(stream, durable, subject_filter)
                puller = Puller(
                    self.nc,
                    stream,
                    durable,
                    self.max_in_flight,
                    partial(self._handle_admitted, tenant),
                    window=partial(self.admission.window, tenant),
                )
                self._pullers.add(puller)
                await puller.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("queue %s/%s (%s): %s; resubscribing", tenant, queue, stream, exc)
                await asyncio.sleep(1.0)
            finally:
                if puller is not None:
                    self._pullers.discard(puller)

    async def _ensure_consumer(self, stream: str, durable: str, subject_filter: str) -> None:
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=subject_filter,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=20_000,
        )
        # Shared by every hub: created once, never changed by a hub with other settings.
        info = await create_consumer(self.nc, stream, config)
        if info.config.ack_wait is not None and abs(info.config.ack_wait - self.ack_wait) > 1e-3:
            log.warning(
                "consumer %s keeps its ack-wait of %g s (this hub's --ack-wait is %g s)",
                durable,
                info.config.ack_wait,
                self.ack_wait,
            )

    # -- one input ----------------------------------------------------------------------

    async def _handle_admitted(self, tenant: str, msg: Msg) -> None:
        await self.admission.admit(tenant)
        try:
            await self._handle(msg)
        finally:
            self.admission.release(tenant)

    async def _handle(self, msg: Msg) -> None:
        try:
            try:
                admitted = await self._guard.admit(msg, self._decode)
            except SignatureRefused as exc:
                await self._dead_letter(msg, str(exc))  # and in IMM_AUDIT (see _signatures)
                return
            except (PayloadError, ValueError) as exc:
                await self._dead_letter(msg, f"undecodable input: {exc}")
                return
            if admitted is None:
                await msg.ack()  # nobody's input (see _guard): kept in the audit only
                return
            tenant, queue, kind, body = admitted[:4]  # queued: its nonce was awaited
            try:
                denied = await self.policy.refuses(tenant, queue, kind, body)
                if denied is not None:  # in the audit (and the run's history); its sender
                    await self.policy.tell_sender(tenant, kind, body, denied)  # is told
                    await msg.ack()
                    return
                if not await self._dispatch(tenant, queue, kind, body, msg):
                    return
            except InvalidInput as exc:
                await self._dead_letter(msg, str(exc))
                return
            except AwaitingStart as exc:
                await self._await_start(msg, exc)
                return
            except StaleAttempt as exc:
                log.info("%s: %s", msg.subject, exc)  # a late heartbeat: nothing to do
            await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            deliveries = msg.metadata.num_delivered or 1
            # A cluster without a leader for a while is no fault of the input's.
            if deliveries >= _POISON_DELIVERIES and not is_transient(exc):
                log.exception("input %s failed %d times", msg.subject, deliveries)
                await self._dead_letter(msg, f"failed {deliveries} times: {exc!r}")
            else:
                log.warning("input %s failed (%r); will retry", msg.subject, exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=min(0.1 * 2**deliveries, 5.0))

    async def _dispatch(self, tenant: str, queue: str, kind: str, body: Any, msg: Msg) -> bool:
        """Apply a durable input; False if it was handed back for later (not to be acked)."""
        if isinstance(body, TimerFired):
            early = body.due - now_ms()
            if body.due and early > _EARLY_FIRING_MS:
                # The server's clock runs ahead of this hub's, which is the one due times
                # are reckoned on: a sleep never ends early. Back when due.
                await msg.nak(delay=early / 1000)
                return False
            await self._on_timer(tenant, queue, body, msg)
        else:
            await self._apply(tenant, queue, kind, body)
        return True

    async def _await_start(self, msg: Msg, exc: AwaitingStart) -> None:
        """An input for a run whose start is durable but not applied: the start is queued
        ahead of it (or being applied by another hub), so it comes back a little later,
        holding no slot meanwhile. If the start never comes, it is dead-lettered."""
        deliveries = msg.metadata.num_delivered or 1
        if deliveries * _START_WAIT_S < self.start_wait:
            with contextlib.suppress(Exception):
                await msg.nak(delay=_START_WAIT_S)
            return
        waited = f"{exc}; it waited {deliveries} times, {_START_WAIT_S:g} s apart, for the start"
        await self._dead_letter(msg, waited)

    # -- timers ---------------------------------------------------------------------------

    async def _on_timer(
        self, tenant: str, queue: str, fired: TimerFired, msg: Msg | None = None
    ) -> None:
        """A timer fired (from the stream, or this hub's clock): apply it to its run, or, for
        a schedule or a retention timer, start a run or expire one."""
        if fired.kind == "schedule":
            assert msg is not None, "schedules fire from the stream only"
            await self._fire_schedule(tenant, fired, msg)
        elif fired.kind == "retention":
            await self._retentions.expire(tenant, fired)
        else:
            await self._apply(tenant, queue, "timer", fired)

    async def _fire_schedule(self, tenant: str, fired: TimerFired, msg: Msg) -> None:
        made = await scheduled_start(self.js, self.names, tenant, fired, msg)
        if made is not None and not firing_refused(self.policy, tenant, *made):
            await self._apply(tenant, made[0], "start", made[1])

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Keep the input, with the reason, on the dead-letter subject; then ack it."""
        seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
        await self._keep_dead_letter(msg.subject, msg.data, reason, ref=str(seq))
        await msg.ack()

    async def _keep_dead_letter(self, subject: str, data: bytes, reason: str, *, ref: str) -> None:
        await keep_dead_letter(self.nc, self.names, self.hub_id, subject, data, reason, ref=ref)
