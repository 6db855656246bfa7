"""Workflow tasks pushed over core NATS: no durable copy unless one turns out to be needed.

A fresh workflow task is pushed by core request to the worker that has the run cached
(``imm.push.<t>.<q>.<worker>``) or, for a run no live worker has, to any worker of the queue
(``imm.push.<t>.<q>``, a queue group). A worker with a free slot answers ``ok:<worker>`` at
once and starts; one without answers ``busy``. That spares the task's write to ``IMM_TASKS``,
its ack, and an fsync on the run's critical path. The task is not lost when something dies,
because until the run's history shows the task closed, someone is responsible for it (the
whole argument: docs/architecture.md, "Workflow tasks over core NATS"):

- this hub, which keeps a record of every task it pushed (``_Pushed``) until an append shows
  the task closed. It publishes the task durably (``Nats-Msg-Id: <run>:<wft>``, as a task
  published durably in the first place) when no worker took it (no responder, ``busy``, no
  answer within ``PUSH_REPLY_S``), when the worker that took it is gone (its key in
  ``imm-workers`` expired or was deleted), when a task taken has not closed within
  ``HOLD_S`` (the lease a durable task would have had), and when the hub stops;
- the worker, which hands a task it cannot finish (a failure of its own, a workflow task
  failure retried later, a graceful stop) back by the same durable publish;
- every other hub, for a hub that died: each hub renews a key in ``imm-hubs`` every
  ``RENEW_S`` naming the lowest history sequence of a transition whose task it may still
  hold (``from_seq``), and pushes only while its last renewal is younger than
  ``PUSH_FRESH_S``. A key left unchanged for ``HUB_DEAD_S`` is claimed by one hub (an
  update expecting the revision it saw), which reads the history from ``from_seq`` on,
  takes the transitions the dead hub appended with a push intended (header
  ``Imm-Push: <hub id>``), publishes each task still open durably, and only then deletes the
  key. Keys stay when all hubs are down, so a hub that starts later recovers them.

"History shows the task closed" is only believed of a read at least as new as the push's
own transition: a replica behind the leader shows an older state, which proves nothing.

A task that is both pushed and published durably runs twice at worst; the second result is
fenced like any stale one (it names a workflow task that is no longer open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from nats.errors import NoRespondersError

from immortal._codec import pack
from immortal._inputs import OK
from immortal._jetstream import last_message
from immortal._names import Names, encode_token
from immortal._requests import Requests
from immortal._wire import EventType, HistoryEvent, RunState, Transition, decode, encode
from immortal_hub._emissions import Emission, workflow_task_emission
from immortal_hub._push_recovery import PUSH_HEADER, ListRun, Recovery

__all__ = ["HUB_DEAD_S", "PUSH_HEADER", "Pushes"]

log = logging.getLogger(__name__)

TAKEN = OK + b":"  # a worker's answer to a push it took: ok:<worker id>\0<instance>
PUSH_REPLY_S = 2.0
HOLD_S = 30.0
RENEW_S = 1.0
PUSH_FRESH_S = 3.0
HUB_DEAD_S = 5.0  # a key unchanged this long (by the server's clock) is a dead hub's
WATCH_QUIET_S = 5.0  # no sight of our own renewals this long: the watch is restarted
SETTLE_S = 2.5  # in touch again (or just started): others get this long to renew first

Durable = Callable[[str, Emission], Awaitable[None]]
Live = Callable[[str, str, str], bool]


@dataclass
class _Pushed:
    """A workflow task this hub pushed, until history shows it closed."""

    tenant: str
    subject: str  # the run's history subject
    emission: Emission
    wft: int
    seq: int  # the history sequence of the transition that scheduled it
    since: float
    worker: str | None = None  # the worker that took it: its key in imm-workers...
    instance: str = ""  # ...and its process (a restart under the same id is another)
    handoff: bool = False  # to be published durably; retried until it is
    handing: bool = False  # a durable publish is under way

    @property
    def taken(self) -> bool:
        return self.worker is not None


class Pushes:
    """This hub's pushed workflow tasks, its key in ``imm-hubs``, and recovery for dead hubs."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        hub_id: str,
        durable: Durable,
        live: Live,
        list_run: ListRun | None = None,
    ) -> None:
        self.nc = nc
        self._list_run = list_run
        self.names = names
        self.hub_id = hub_id
        self._durable = durable
        self._live = live
        self._pending: dict[str, _Pushed] = {}  # history subject -> its pushed task
        self._floors: dict[int, int] = {}  # appends in flight that may push -> lowest seq
        self._tokens = count()
        self._last_seq = 0  # the newest history sequence this hub appended, or saw at the end
        self._end_seen = -1e9  # monotonic time it last read the history stream's end
        self._renewed = -1e9  # monotonic time the last successful renewal was sent
        # Other hubs' keys -> (revision, when it was stored, by the server's clock). Ages
        # are judged by the server's clock alone: our own renewals, as the watch shows them,
        # tell what time it is there (``_server_now``), so hosts' clocks never matter, and a
        # hub that just started can tell a key left unchanged long before it started.
        self._hubs: dict[str, tuple[int, float]] = {}
        self._own_seen: tuple[float, float] | None = None  # (stored, monotonic) of our key
        self._watch: asyncio.Task[Any] | None = None
        self._watch_started = 0.0
        self._in_touch_since = 0.0  # monotonic: our renewals show without a gap since
        self._instances: dict[str, str] = {}  # worker key -> the process that holds it
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.pushed = 0  # for tests and the benchmark
        self.handed_off = 0
        self._recovering: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self.js = self.nc.jetstream()
        self._kv = await self.js.key_value(self.names.bucket_hubs)
        self._recovery = Recovery(
            self.nc, self._kv, self.names, self.hub_id, self._durable, self._list_run
        )
        self._running = True
        await self._renew()
        # The first watch is set up here, not in the task: cancelled halfway through its
        # setup (a hub stopped as soon as started), nats-py's watch leaves a callback
        # waiting 5 s, which the connection's drain then waits for.
        watcher = await self._kv.watchall()
        self._watch_started = time.monotonic()
        self._spawn(self._keep_renewing())
        self._watch = self._spawn(self._watch_hubs(watcher))

    async def stop(self) -> None:
        """Stop pushing; publish durably what this hub still answers for (the hub applies
        no more results, so nothing it pushed can close through it any more)."""
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in list(self._pending.values()):
            with contextlib.suppress(Exception):
                await self._hand_off(p, fresh=p.taken)
        if not self._pending and not self._floors:  # else the key stays for another hub
            with contextlib.suppress(Exception):
                await self._kv.delete(self._key(self.hub_id))

    # -- the hub's side of a transition ---------------------------------------------------

    def reserve(self, state: RunState, events: list[HistoryEvent]) -> int | None:
        """Before an append that schedules a workflow task: may it be pushed? If so, hold
        the key's ``from_seq`` at or below the append's sequence until ``release``."""
        if state.wft is None or not any(
            e.id == state.wft and e.type is EventType.WORKFLOW_TASK_SCHEDULED for e in events
        ):
            return None
        state.pushed_by = self.hub_id if self._can_push() else None
        if state.pushed_by is None:
            return None
        return self.hold()

    def hold(self) -> int:
        """Keep the key's ``from_seq`` at or below the next append until ``release``: what
        the recovery of this hub must still read (a young run's start, ``_runs_index``)."""
        token = next(self._tokens)
        self._floors[token] = self._last_seq + 1
        return token

    def release(self, token: int | None) -> None:
        if token is not None:
            self._floors.pop(token, None)

    def appended(self, subject: str, seq: int, state: RunState) -> None:
        """An append succeeded: a pushed task of this run that it shows closed is done."""
        self._last_seq = max(self._last_seq, seq)
        pushed = self._pending.get(subject)
        if pushed is not None and state.wft != pushed.wft:
            self._forget(pushed)

    def push(self, tenant: str, subject: str, e: Emission, seq: int) -> bool:
        """Push ``e`` if it is a workflow task and pushing is on; False: publish it durably."""
        if e.kind != "wf" or not self._can_push():
            return False
        assert e.body is not None and hasattr(e.body, "wft")
        pushed = _Pushed(tenant, subject, e, int(e.body.wft), seq, time.monotonic())
        self._pending[subject] = pushed
        self.pushed += 1
        self._spawn(self._offer(pushed))
        return True

    def unpushed(self, subject: str, state: RunState, emissions: list[Emission]) -> list[Emission]:
        """What to re-emit for a redelivered input: all of it, but not the open workflow
        task while the hub that pushed it answers for it (this hub, holding its record; or
        another whose key is being renewed). Otherwise it is published durably now."""
        hub = state.pushed_by
        if hub == self.hub_id:
            pushed = self._pending.get(subject)
            answered = pushed is not None and pushed.wft == state.wft
        else:
            seen = self._hubs.get(self._key(hub)) if hub is not None else None
            now = self._server_now()
            answered = seen is not None and now is not None and now - seen[1] < 3 * RENEW_S
        return [e for e in emissions if e.kind != "wf"] if answered else emissions

    def doubt(self, tenant: str, subject: str, wft: int, after_seq: int) -> None:
        """An append that may push failed without an answer: it may have been stored,
        naming this hub as the pusher of a task it never pushed, which nobody else would
        publish while this hub lives. Look on the leader until it is known, and publish the
        task durably if so. The key's ``from_seq`` stays at or below that append meanwhile."""
        token = next(self._tokens)
        self._floors[token] = after_seq + 1
        self._spawn(self._settle(token, tenant, subject, wft, after_seq))

    async def _settle(self, token: int, tenant: str, subject: str, wft: int, after: int) -> None:
        stream = self.names.stream_history
        try:
            while self._running:
                try:
                    msg = await last_message(self.nc, stream, subject, leader=True)
                except Exception as exc:  # still cut off: look again
                    log.debug("settling the append after %s on %s: %s", after, subject, exc)
                    await asyncio.sleep(RENEW_S)
                    continue
                if msg is not None and msg.seq > after:
                    state = decode(Transition, msg.data).state
                    if state.wft == wft and state.pushed_by == self.hub_id:
                        await self._durable(tenant, workflow_task_emission(state, msg.seq))
                        self.handed_off += 1
                return
        finally:
            if self._running:  # stopped: the key stays, and another hub scans for it
                self._floors.pop(token, None)

    def registered(self, key: str, registration: dict[str, Any]) -> None:
        """A worker renewed its key in imm-workers. If another process now holds the key
        (a worker restarted under the same id), what the previous one took goes durable."""
        instance = str(registration.get("instance", ""))
        previous = self._instances.get(key)
        self._instances[key] = instance
        if previous is not None and previous != instance:
            self._hand_off_taken(key, previous)

    def gone(self, key: str) -> None:
        """A worker's key expired or was deleted: what it took goes durable."""
        self._instances.pop(key, None)
        self._hand_off_taken(key, None)

    def _hand_off_taken(self, key: str, instance: str | None) -> None:
        for p in list(self._pending.values()):
            if p.worker == key and instance in (None, p.instance):
                self._spawn(self._hand_off(p, fresh=True))

    # -- pushing ------------------------------------------------------------------------

    def _can_push(self) -> bool:
        return self._running and time.monotonic() - self._renewed < PUSH_FRESH_S

    async def _offer(self, p: _Pushed) -> None:
        e = p.emission
        sticky = e.sticky if e.sticky and self._live(p.tenant, e.queue, e.sticky) else None
        subject = self.names.push_subject(p.tenant, e.queue, sticky)
        try:
            reply = await Requests.of(self.nc).request(
                subject, encode(e.body), timeout=PUSH_REPLY_S
            )
            answer = reply.data
        except NoRespondersError:
            answer = b"none"
        except Exception as exc:  # a timeout, a reconnect: it may have been taken
            log.debug("push of %s unanswered: %r", e.msg_id, exc)
            answer = b""
        if answer.startswith(TAKEN):  # ok:<worker id>\0<instance>
            worker, _, instance = answer[len(TAKEN) :].decode(errors="replace").partition("\0")
            p.worker = self.names.worker_key(p.tenant, e.queue, worker)
            p.instance = instance
            return
        # Nobody took it (``busy``, no responder), or we do not know: publish it durably.
        await self._hand_off(p, fresh=not answer)

    async def _hand_off(self, p: _Pushed, *, fresh: bool) -> None:
        """Publish a pushed task durably, unless (``fresh``: checked on the newest
        history) it is closed already."""
        if self._pending.get(p.subject) is not p or p.handing:
            return  # closed meanwhile, pushed again, or being handed off
        p.handoff = p.handing = True
        try:
            await self._publish_durably(p, fresh=fresh)
        except Exception as exc:  # disconnected: the next sweep tries again
            log.debug("durable publish of %s failed: %s", p.emission.msg_id, exc)
        finally:
            p.handing = False

    async def _publish_durably(self, p: _Pushed, *, fresh: bool) -> None:
        if fresh:
            msg = await last_message(self.nc, self.names.stream_history, p.subject)
            # Closed only by a read that has the push's own transition: a replica behind the
            # leader shows an older state, which proves nothing.
            if msg is not None and msg.seq >= p.seq:
                if decode(Transition, msg.data).state.wft != p.wft:
                    self._forget(p)
                    return
        await self._durable(p.tenant, p.emission)
        self._forget(p)
        self.handed_off += 1

    def _forget(self, p: _Pushed) -> None:
        if self._pending.get(p.subject) is p:
            del self._pending[p.subject]

    def _sweep(self) -> None:
        """Retry durable publishes that failed; hand off tasks taken but not done in time."""
        now = time.monotonic()
        for p in list(self._pending.values()):
            if p.handoff or (p.taken and now - p.since > HOLD_S):
                self._spawn(self._hand_off(p, fresh=True))

    # -- this hub's key, and the keys of the others -----------------------------------------

    def _key(self, hub_id: str) -> str:
        return encode_token(hub_id)

    def _from_seq(self) -> int:
        return min(
            [self._last_seq + 1, *self._floors.values(), *(p.seq for p in self._pending.values())]
        )

    async def _renew(self) -> None:
        sent = time.monotonic()
        if not self._pending and not self._floors and sent - self._end_seen > 10.0:
            # Idle: whatever this hub appends next comes after the stream's end, so a hub
            # that recovers this one need not read what others appended meanwhile.
            info = await self.js.stream_info(self.names.stream_history)
            self._last_seq = max(self._last_seq, info.state.last_seq)
            self._end_seen = sent
        value = pack({"hub": self.hub_id, "from_seq": self._from_seq(), "ts": time.time()})
        subject = self.names.kv_subject(self.names.bucket_hubs, self._key(self.hub_id))
        await Requests.of(self.nc).publish(subject, value, {})  # a KV put
        self._renewed = sent

    # The loops below check ``_running`` as well as being cancelled: on Python 3.11 a
    # cancellation that lands as a ``wait_for`` inside nats-py completes is swallowed.

    async def _keep_renewing(self) -> None:
        while self._running:
            await asyncio.sleep(RENEW_S)
            try:
                await self._renew()
            except Exception as exc:  # pushing pauses (``_can_push``) until a renewal lands
                log.warning("hub %s could not renew its key: %s", self.hub_id, exc)
            self._sweep()
            self._check_watch()
            self._claim_dead()

    def _server_now(self) -> float | None:
        """The server's time now, from when it stored our newest renewal (None before the
        watch showed one, or while it shows none: then no other key's age is known)."""
        if self._own_seen is None:
            return None
        stored, at = self._own_seen
        if time.monotonic() - at > WATCH_QUIET_S:
            return None
        return stored + (time.monotonic() - at)

    def _saw_own(self, stored: float) -> None:
        now = time.monotonic()
        if self._own_seen is None or now - self._own_seen[1] > 2 * RENEW_S:
            # The first of our renewals in a while: other hubs that were cut off too (a
            # server outage) renew as soon as they are back; give them the time to.
            self._in_touch_since = now
        self._own_seen = (stored, now)

    def _check_watch(self) -> None:
        """Renewals land but the watch has not shown one for a while: a watch can go quiet
        after a server restart without an error, so start it again."""
        last = self._own_seen[1] if self._own_seen is not None else self._watch_started
        quiet = time.monotonic() - last > WATCH_QUIET_S
        renewing = time.monotonic() - self._renewed < 2 * RENEW_S
        if quiet and renewing and self._watch is not None and self._running:
            log.info("hub %s: the imm-hubs watch went quiet; watching again", self.hub_id)
            self._watch.cancel()
            self._own_seen = None  # until the new watch shows a renewal
            self._watch_started = time.monotonic()
            self._watch = self._spawn(self._watch_hubs(None))

    async def _watch_hubs(self, watcher: Any) -> None:
        own = self._key(self.hub_id)
        while self._running:
            try:
                watcher = watcher or await self._kv.watchall()
                try:
                    async for entry in watcher:  # no timeout: cancelling it is clean
                        if entry is None:
                            continue
                        stored = entry.created.timestamp() if entry.created else time.time()
                        if entry.key == own:
                            self._saw_own(stored)
                        elif entry.operation in (None, "PUT"):
                            self._hubs[entry.key] = (entry.revision, stored)
                        else:
                            self._hubs.pop(entry.key, None)
                finally:
                    await watcher.stop()
                    watcher = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnects, server restarts: watch again
                log.debug("hub watch restarted: %s", exc)
                await asyncio.sleep(1.0)

    def _claim_dead(self) -> None:
        """Recover the hubs whose keys went stale (one recovery at a time: it reads the
        history once for all of them, see ``_push_recovery``)."""
        now = self._server_now()
        if now is None or time.monotonic() - self._in_touch_since < SETTLE_S:
            return
        if self._recovering is not None and not self._recovering.done():
            return
        stale = [(k, rev) for k, (rev, stored) in self._hubs.items() if now - stored > HUB_DEAD_S]
        if stale:
            for key, _ in stale:
                self._hubs.pop(key, None)
            self._recovering = self._spawn(self._recover(stale))

    async def _recover(self, stale: list[tuple[str, int]]) -> None:
        for key, revision in await self._recovery.recover(stale):
            self._hubs.setdefault(key, (revision, 0.0))  # cut off: claimed again later

    @property
    def recovered(self) -> int:
        """Dead hubs' pushed tasks this hub published durably (for tests)."""
        return self._recovery.recovered

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
