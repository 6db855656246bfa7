"""How the hub applies one input to a run: load the run's state (cache, else one direct
get of the history subject's last message), decide the transition (``_transitions``),
append one history message guarded by ``Nats-Expected-Last-Subject-Sequence`` and
chained to the previous one, then publish what it asks for (tasks, timers, inputs) with
deterministic ``Nats-Msg-Id``s. A mixin of ``Hub`` (``_hub.py``), which gives it the
connection, the cache, the locks and the other parts it names below."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS
from pydantic import BaseModel

from immortal._errors import PayloadError
from immortal._integrity import transition_digest
from immortal._jetstream import is_wrong_last_sequence, last_message
from immortal._locks import KeyedLocks
from immortal._names import Names
from immortal._timers import schedule_headers
from immortal._transient import publish, retry_transient
from immortal._wire import (
    ActivityHeartbeat,
    ActivityResult,
    ActivityStarted,
    AppliedTransition,
    ChildClosed,
    RequestCancel,
    RequestTerminate,
    RunState,
    SignalWorkflow,
    StartWorkflow,
    TimerFired,
    Transition,
    WorkflowTaskResult,
    decode,
    encode,
    now_ms,
)
from immortal.security import HUB_PID
from immortal_hub._emissions import Emission, attempt_timers, emissions_for, open_emissions
from immortal_hub._push import PUSH_HEADER
from immortal_hub._push_recovery import UNLISTED_HEADER
from immortal_hub._transitions import (
    AwaitingStart,
    InvalidInput,
    Outcome,
    StaleAttempt,
    apply_activity_heartbeat,
    apply_activity_result,
    apply_activity_started,
    apply_cancel_request,
    apply_child_closed,
    apply_signal,
    apply_start,
    apply_terminate,
    apply_timer_fired,
    apply_workflow_task_result,
    input_id,
)
from immortal_hub.policy import RefusedInput, apply_refused

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from immortal_hub._dead_workers import WorkerWatch
    from immortal_hub._local_timers import LocalTimers
    from immortal_hub._metrics import HubMetrics
    from immortal_hub._push import Pushes
    from immortal_hub._retention import Retentions
    from immortal_hub._runs_index import RunsIndex
    from immortal_hub._signatures import RunNonce
    from immortal_hub._writes import WriteGate
    from immortal_hub.policy import PolicyGate

__all__ = ["INPUTS", "RunApplier"]

log = logging.getLogger(__name__)

_MAX_RACES = 50

_Apply = Callable[[RunState | None, Any, str, int], Outcome]
# Every input kind: its wire model, and how it applies to (state, body, queue, now).
INPUTS: dict[str, tuple[type[BaseModel], _Apply]] = {
    "start": (StartWorkflow, apply_start),
    "wft": (WorkflowTaskResult, lambda s, b, q, now: apply_workflow_task_result(s, b, now)),
    "act": (ActivityResult, lambda s, b, q, now: apply_activity_result(s, b, now)),
    "timer": (TimerFired, lambda s, b, q, now: apply_timer_fired(s, b, now)),
    "started": (ActivityStarted, lambda s, b, q, now: apply_activity_started(s, b, now)),
    "heartbeat": (ActivityHeartbeat, lambda s, b, q, now: apply_activity_heartbeat(s, b, now)),
    "signal": (SignalWorkflow, lambda s, b, q, now: apply_signal(s, b, now)),
    "cancel": (RequestCancel, lambda s, b, q, now: apply_cancel_request(s, b, now)),
    "terminate": (RequestTerminate, lambda s, b, q, now: apply_terminate(s, b, now)),
    "child": (ChildClosed, lambda s, b, q, now: apply_child_closed(s, b, now)),
}


class RunApplier:
    names: Names
    hub_id: str
    transitions: int
    policy: PolicyGate
    _cache: OrderedDict[str, tuple[RunState, int, bytes]]
    _cache_size: int
    _locks: KeyedLocks
    _pushes: Pushes
    _runs: RunsIndex
    _retentions: Retentions
    _timers: LocalTimers
    _workers: WorkerWatch
    _writes: WriteGate
    _metrics: HubMetrics
    js: JetStreamContext

    @property
    def nc(self) -> NATS:
        raise NotImplementedError

    @staticmethod
    def _decode(kind: str, data: bytes) -> Any:
        if kind not in INPUTS:
            raise PayloadError(f"unknown input kind {kind!r}")
        return decode(INPUTS[kind][0], data)

    async def _apply(
        self, tenant: str, queue: str, kind: str, body: Any, *, nonce: RunNonce | None = None
    ) -> AppliedTransition | None:
        """Apply one input; return what was appended (None when nothing was). ``nonce``: a
        signed input's, recorded in the run by the transition that applies it, and looked
        for there when it applies to nothing (``_signatures.RunNonce``)."""
        subject = self.names.history_subject(tenant, body.workflow_id, body.run_id)
        async with self._locks.hold(subject):
            fresh = False  # read from the stream's leader (a follower may lag behind it)
            for attempt in range(_MAX_RACES):
                if attempt == 0 and kind == "start" and subject not in self._cache:
                    # A start's run is new, nearly always: skip the read. If it exists after
                    # all (a redelivered start), the append expecting sequence 0 fails, and
                    # the next round reads it and finds the start applied.
                    state, seq, digest = None, 0, b""
                else:
                    state, seq, digest = await self._load(subject, fresh=fresh)
                try:
                    outcome = self._transition(state, queue, kind, body)
                except (InvalidInput, StaleAttempt, AwaitingStart) as exc:
                    if not fresh:  # judge only on fresh state: another hub may have moved on
                        self._cache.pop(subject, None)
                        fresh = True
                        continue
                    await self._refused(tenant, subject, exc, state, seq, digest, nonce)
                    raise
                if outcome.confirmed is not None:
                    # An attempt about to run, checked on what this hub knows: a stale
                    # verdict is taken on a fresh read (above), a confirmation needs none,
                    # nor a re-emission. The attempt's timers start now, on this clock.
                    assert state is not None
                    await self._emit(tenant, attempt_timers(state, *outcome.confirmed))
                    return None
                if not outcome.events and not fresh:
                    # Appends are guarded by the expected sequence; decisions that append
                    # nothing are not, so they are taken on a fresh read.
                    self._cache.pop(subject, None)
                    fresh = True
                    continue
                if not outcome.events:
                    if nonce is not None:
                        await nonce.settle(state)  # a replay is refused as one
                    closing = state is not None and state.applied[-1:] == [input_id(body)]
                    await self._appended_nothing(
                        tenant, subject, outcome, state, seq, digest, closing=closing
                    )
                    return None
                if nonce is not None and not nonce.record(outcome):
                    nonce = await nonce.create()  # the run's ring is full: imm-nonces it is
                applied = await self._commit(tenant, subject, outcome, seq, digest)
                if applied is None:  # another hub moved the run (or our own lost ack did):
                    fresh = True  # reload from the leader and decide again
                    continue
                return applied
            raise RuntimeError(f"{subject}: lost the append race {_MAX_RACES} times")

    async def _refused(
        self,
        tenant: str,
        subject: str,
        exc: Exception,
        state: RunState | None,
        seq: int,
        digest: bytes,
        nonce: RunNonce | None,
    ) -> None:
        """An input the run refuses (decided on a fresh read): a copy of a signed one the
        run recorded is refused as a replay instead (``SignatureRefused``); the run's
        tasks go out again for a stale attempt (as in :meth:`_appended_nothing`)."""
        if nonce is not None:
            await nonce.settle(state)
        if isinstance(exc, StaleAttempt) and state is not None:
            await self._reemit(tenant, subject, state, seq, digest)

    async def _appended_nothing(
        self,
        tenant: str,
        subject: str,
        outcome: Outcome,
        state: RunState | None,
        seq: int,
        digest: bytes,
        *,
        closing: bool,
    ) -> None:
        """An input that changes nothing (decided on a fresh read); ``closing``: it is the
        input that closed the run, redelivered."""
        if not outcome.reemit:
            log.debug("%s: %s", subject, outcome.note)
            return
        if not outcome.duplicate:
            log.info("%s: %s", subject, outcome.note)
        if state is not None:
            # Whatever the run still owes goes out again (deduped by id): an earlier
            # transition's tasks may have been lost to an outage between its append and its
            # publishes, and this input is its sender's retry.
            await self._reemit(tenant, subject, state, seq, digest, closing=closing)

    async def _commit(
        self, tenant: str, subject: str, outcome: Outcome, seq: int, digest: bytes
    ) -> AppliedTransition | None:
        """Append the outcome after ``seq`` and publish what it asks for; None if the
        history had moved on."""
        assert outcome.state is not None
        push = self._pushes.reserve(outcome.state, outcome.events)
        pushing = push is not None
        try:
            try:
                appending = self._append(tenant, subject, outcome, seq, digest, pushing)
                appended = await self._runs.alongside(
                    tenant, outcome.state, outcome.events, appending
                )
            except Exception:
                if pushing:  # stored or not? (_push settles it)
                    assert outcome.state.wft is not None
                    self._pushes.doubt(tenant, subject, outcome.state.wft, seq)
                raise
            if appended is None:
                return None
            new_seq, new_digest = appended
            emissions = self.policy.screen(
                tenant, outcome.state, emissions_for(outcome.state, outcome.events, new_seq, seq)
            )
            if pushing:  # its workflow task goes over core NATS (_push)
                pushed = partial(self._pushes.push, tenant, subject, seq=new_seq)
                emissions = [e for e in emissions if not pushed(e)]
            if outcome.closes_run:  # the runs index, beside the closing emissions
                await asyncio.gather(
                    self._runs.closed(tenant, outcome.state, new_seq, new_digest),
                    self._retentions.arm(tenant, outcome.state),
                    self._emit(tenant, emissions),
                )
            else:
                await self._emit(tenant, emissions)
        finally:
            self._pushes.release(push)
        return AppliedTransition(prev_seq=seq, seq=new_seq, events=outcome.events)

    async def _reemit(
        self,
        tenant: str,
        subject: str,
        state: RunState,
        seq: int,
        digest: bytes,
        *,
        closing: bool = False,
    ) -> None:
        """Publish again what the run owes, but a workflow task that a live hub pushed and
        still answers for (``_push``); and what the runs index may lack (``closing``: the
        input being redelivered is the one that closed the run)."""
        unpushed = self._pushes.unpushed(subject, state, open_emissions(state, seq))
        await asyncio.gather(
            self._emit(tenant, self.policy.screen(tenant, state, unpushed)),
            self._runs.reemit(tenant, state, seq, digest, closing=closing),
        )

    @staticmethod
    def _transition(state: RunState | None, queue: str, kind: str, body: Any) -> Outcome:
        if isinstance(body, RefusedInput):  # what the policy refused (policy._refused)
            return apply_refused(state, body, now_ms())
        return INPUTS[kind][1](state, body, queue, now_ms())

    async def _load(self, subject: str, *, fresh: bool) -> tuple[RunState | None, int, bytes]:
        """(state, history sequence, digest of that transition): cached, else read; with
        ``fresh``, read from the stream's leader, which has everything appended so far."""
        cached = None if fresh else self._cache.get(subject)
        if cached is not None:
            self._cache.move_to_end(subject)
            return cached
        stream = self.names.stream_history
        msg = await retry_transient(
            lambda: last_message(self.nc, stream, subject, leader=fresh), what=subject
        )
        if msg is None:
            return None, 0, b""
        return decode(Transition, msg.data).state, msg.seq, transition_digest(msg.data)

    async def _append(
        self,
        tenant: str,
        subject: str,
        outcome: Outcome,
        expected_seq: int,
        prev: bytes,
        pushing: bool = False,
    ) -> tuple[int, bytes] | None:
        """Append one transition chained to the previous one; (sequence, digest), or None
        if another hub appended first. ``pushing``: its workflow task may be pushed, which
        the header records for the recovery of a dead hub's pushes."""
        assert outcome.state is not None
        body = encode(Transition(events=outcome.events, state=outcome.state, prev=prev))
        headers = {"Nats-Expected-Last-Subject-Sequence": str(expected_seq)}
        if pushing:
            headers[PUSH_HEADER] = self.hub_id
        if self._runs.lazy and outcome.starts and not outcome.state.status.closed:
            headers[UNLISTED_HEADER] = self.hub_id  # listed later (_runs_index)
        try:
            # Safe to repeat: if a try that timed out was stored, the next one is refused
            # (wrong last sequence) and the reload finds the input applied.
            new_seq = await self._write(tenant, subject, body, headers)
        except Exception as exc:
            self._cache.pop(subject, None)
            if is_wrong_last_sequence(exc):
                return None
            raise
        self.transitions += 1
        self._metrics.transitions.add(1, {"tenant": tenant, "queue": outcome.state.queue})
        digest = transition_digest(body)
        self._remember(subject, outcome.state, new_seq, digest)
        self._pushes.appended(subject, new_seq, outcome.state)
        return new_seq, digest

    def _forget(self, subject: str) -> None:
        self._cache.pop(subject, None)

    def _remember(self, subject: str, state: RunState, seq: int, digest: bytes) -> None:
        if state.status.closed:
            self._cache.pop(subject, None)
            return
        self._cache[subject] = (state, seq, digest)
        self._cache.move_to_end(subject)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _emit(self, tenant: str, emissions: list[Emission]) -> None:
        if emissions:
            await asyncio.gather(*(self._publish_emission(tenant, e) for e in emissions))

    async def _publish_emission(self, tenant: str, e: Emission) -> None:
        if e.kind == "input":
            assert e.input_kind is not None
            subject = self.names.input_subject(tenant, e.queue, e.input_kind, HUB_PID)
            await self._write(tenant, subject, encode(e.body), {"Nats-Msg-Id": e.msg_id})
            return
        if e.kind == "purge":
            assert isinstance(e.body, TimerFired)
            subject = self.names.timer_subject(tenant, e.body.run_id, e.body.timer)
            self._timers.disarm(subject)
            try:  # best effort: a timer that fires anyway is recorded as no longer needed
                await self._purge_timer(subject)
            except Exception as exc:
                log.debug("purging %s: %s", subject, exc)
            return
        if e.kind == "timer":
            assert e.due_ms is not None and isinstance(e.body, TimerFired)
            # One schedule per subject; it fires into the same stream, where the hub's
            # timer consumer for this queue picks it up (also after a restart).
            await self._write(
                tenant,
                self.names.timer_subject(tenant, e.body.run_id, e.body.timer),
                encode(e.body),
                schedule_headers(e.due_ms, self.names.fired_subject(tenant, e.queue), e.msg_id),
            )
            self._timers.arm(tenant, e)
            return
        subject = self.names.task_subject(tenant, e.queue, e.kind)
        if e.sticky and self._workers.sticky(tenant, e.queue, e.sticky):
            subject = self.names.sticky_subject(tenant, e.queue, e.sticky)  # it has the run
        await self._write(tenant, subject, encode(e.body), {"Nats-Msg-Id": e.msg_id})

    async def _write(self, tenant: str, subject: str, data: bytes, headers: dict[str, str]) -> int:
        """A JetStream write of ``tenant``'s, through the write gate (``_writes``)."""
        async with self._writes.slot(tenant):
            return await publish(self.nc, subject, data, headers=headers)

    async def _purge_timer(self, subject: str) -> None:
        await self.js.purge_stream(self.names.stream_timers, subject=subject)
