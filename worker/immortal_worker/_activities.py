"""Activity tasks on a worker: run one attempt, report it, keep the hub told.

Each delivery is first confirmed with the hub (does the attempt still count?), runs under
the task's lease (held until its result is delivered),
sends heartbeats when the activity has a heartbeat timeout, and ends with a result (or a
failure) that the worker reports, running the workflow code ahead with it where it can.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from contextvars import copy_context

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from immortal._activity import ActivityInfo, Heartbeats, current_activity, current_heartbeats
from immortal._codec import decode_args, decode_value, encode_value
from immortal._definitions import ActivityDefinition
from immortal._errors import ApplicationError, failure_from_exception
from immortal._inputs import REJECTED, STALE, StaleInput
from immortal._names import InputKind, Names
from immortal._wire import (
    ActivityHeartbeat,
    ActivityResult,
    ActivityStarted,
    ActivityTask,
    AppliedTransition,
    EventType,
    Failure,
    decode,
    encode,
    now_ms,
)
from immortal.codec import Binding, PayloadCodec
from immortal.codec._fields import activity_field
from immortal.codec._sealing import open_payload, seal, seal_failure
from immortal.security.connection import sender_of
from immortal.security.signing import (
    forget_session,
    refusal_in,
    session_refused,
    signed_headers,
)

__all__ = ["ActivityRunner"]

log = logging.getLogger(__name__)

Send = Callable[[str, InputKind, bytes, str], Awaitable[bytes | None]]
ReportResult = Callable[[ActivityTask, ActivityResult], Awaitable[None]]


class ActivityRunner:
    """Runs the activity tasks one worker pulls (``handle`` is the puller's handler)."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        tenant: str,
        worker_id: str,
        activities: dict[str, ActivityDefinition],
        executor: ThreadPoolExecutor,
        *,
        hold: Callable[[Msg, str | None], AbstractAsyncContextManager[None]],
        send: Send,
        report_result: ReportResult,
        codec: PayloadCodec | None = None,
    ) -> None:
        self._codec = codec
        self._nc, self._names, self._tenant, self._worker_id = nc, names, tenant, worker_id
        self._activities = activities
        self._executor = executor
        self._hold = hold
        self._send = send
        self._report_result = report_result

    def _at(self, task: ActivityTask, part: str) -> Binding:
        """Where a payload of this activity belongs (its command's seq names it)."""
        return Binding(self._tenant, task.workflow_id, task.run_id, activity_field(task.seq, part))

    async def handle(self, msg: Msg) -> None:
        """Run one delivery of an activity task and report its outcome."""
        task = decode(ActivityTask, msg.data)
        delivery = msg.metadata.num_delivered or 1
        started = now_ms()
        # The lease is held until the result is delivered, not just while the code runs:
        # a hub that is slow to answer must not cost the task to another worker.
        # Listed as running this attempt while held: what `describe` shows as its worker.
        async with self._hold(msg, f"{task.run_id}/{task.scheduled_id}/{task.attempt}"):
            if await self._confirm(task, delivery):
                # This attempt no longer counts: an earlier delivery of it was lost (the hub
                # counted it and sends the next attempt as its own task), or it ended
                # meanwhile (timed out, retried, its run closed) while this delivery waited,
                # say in the buffers of a worker that was frozen. It must not run.
                await msg.ack()
                return
            beats = Heartbeats()
            runner = asyncio.create_task(self._run_activity(task, beats))
            sender = None
            if task.heartbeat_timeout is not None:
                sender = asyncio.create_task(self._send_heartbeats(task, delivery, beats, runner))
            result: bytes | None = None
            failure: Failure | None = None
            try:
                result = await runner
            except asyncio.CancelledError:
                if not beats.cancelled.is_set():
                    raise
            except Exception as exc:
                failure = Failure.model_validate(failure_from_exception(exc))
                failure = seal_failure(self._codec, self._at(task, "failure"), failure)
            finally:
                if sender is not None:
                    sender.cancel()
            if beats.cancelled.is_set():
                # The attempt no longer counts (timed out, or retried elsewhere): stop here.
                log.warning(
                    "activity %s attempt %d cancelled: %s", task.name, task.attempt, beats.reason
                )
                await msg.ack()
                return
            body = ActivityResult(
                workflow_id=task.workflow_id,
                run_id=task.run_id,
                scheduled_id=task.scheduled_id,
                attempt=task.attempt,
                delivery=delivery,
                result_id=f"{task.run_id}:{task.scheduled_id}:{task.attempt}:{delivery}",
                worker=self._worker_id,
                started_ts=started,
                ended_ts=now_ms(),
                result=result,
                failure=failure,
            )
            await self._report_result(task, body)
        await msg.ack()

    async def _confirm(self, task: ActivityTask, delivery: int) -> bool:
        """Before any user code runs, ask the hub whether this attempt still counts; it then
        arms the attempt's timers on its own clock (and records the start when the activity
        has a schedule-to-start timeout, which that disarms).

        Returns whether this delivery must not run: the hub counted its attempt as lost
        (a redelivered task), or the attempt no longer counts at all. If no hub answered
        (the report went durable), the attempt runs: at worst it runs again as the next
        attempt, which an idempotency key absorbs.
        """
        body = ActivityStarted(
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            scheduled_id=task.scheduled_id,
            attempt=task.attempt,
            delivery=delivery,
            worker=self._worker_id,
            result_id=f"started:{task.run_id}:{task.scheduled_id}:{task.attempt}:{delivery}",
        )
        try:
            reply = await self._send(task.workflow_queue, "started", encode(body), body.result_id)
        except StaleInput as exc:  # this attempt already ended: running it would be waste
            log.info("activity %s: not running a stale delivery: %s", task.name, exc)
            return True
        if reply is None or delivery == 1:
            return False
        applied = decode(AppliedTransition, reply)
        return any(
            e.caused_by == task.scheduled_id
            and e.type in (EventType.ACTIVITY_ATTEMPT_FAILED, EventType.ACTIVITY_FAILED)
            for e in applied.events
        )

    async def _send_heartbeats(
        self, task: ActivityTask, delivery: int, beats: Heartbeats, runner: asyncio.Task[bytes]
    ) -> None:
        """Send progress to the hub (only when there was some), a third of the timeout apart.

        The hub's reply says whether the attempt still counts; if not, the attempt is
        cancelled (an async activity at once, a sync one at its next ``heartbeat()``).
        """
        assert task.heartbeat_timeout is not None
        sent, n = 0, 0
        subject = self._names.rpc_subject(
            self._tenant, task.workflow_queue, "heartbeat", sender_of(self._nc)
        )
        while not runner.done():
            await asyncio.sleep(task.heartbeat_timeout / 3)
            if beats.beats == sent:
                continue  # no progress: let the heartbeat timer run out
            sent, n = beats.beats, n + 1
            body = ActivityHeartbeat(
                workflow_id=task.workflow_id,
                run_id=task.run_id,
                scheduled_id=task.scheduled_id,
                attempt=task.attempt,
                worker=self._worker_id,
                result_id=f"hb:{task.run_id}:{task.scheduled_id}:{task.attempt}:{delivery}:{n}",
                details=None
                if beats.details is None
                else seal(self._codec, self._at(task, "heartbeat"), encode_value(beats.details)),
            )
            try:
                data = encode(body)
                headers = signed_headers(self._nc, subject, data)
                reply = await self._nc.request(subject, data, timeout=5.0, headers=headers)
            except (NoRespondersError, NatsTimeout):
                continue  # no hub now; the timer decides
            if reply.data.startswith(REJECTED):
                refused = refusal_in(reply.data[len(REJECTED) :].decode(errors="replace").strip())
                if refused is not None and session_refused(refused, headers):
                    forget_session(self._nc, subject)  # the next beat is signed with Ed25519
                continue
            if reply.data.startswith(STALE):
                beats.reason = reply.data[len(STALE) :].decode(errors="replace").strip()
                beats.cancelled.set()
                runner.cancel()
                return

    async def _run_activity(self, task: ActivityTask, beats: Heartbeats) -> bytes:
        defn = self._activities.get(task.name)
        if defn is None:
            raise ApplicationError(
                f"activity {task.name!r} is not registered on worker {self._worker_id} "
                f"(registered: {', '.join(sorted(self._activities)) or 'none'})",
                type="UnknownActivityType",
            )
        args = decode_args(
            open_payload(self._codec, self._at(task, "input"), task.input) or b"\x90",
            defn.arg_types,
        )
        info = ActivityInfo(
            tenant=self._tenant,
            workflow_id=task.workflow_id,
            run_id=task.run_id,
            workflow_type=task.workflow_type,
            activity_id=task.scheduled_id,
            name=task.name,
            attempt=task.attempt,
            worker=self._worker_id,
            heartbeat_details=decode_value(
                open_payload(self._codec, self._at(task, "heartbeat"), task.heartbeat_details)
            ),
        )
        token = current_activity.set(info)
        beats_token = current_heartbeats.set(beats)
        try:
            if defn.is_async:
                value = await defn.fn(*args)
            else:
                ctx = copy_context()
                value = await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: ctx.run(defn.fn, *args)
                )
        finally:
            current_activity.reset(token)
            current_heartbeats.reset(beats_token)
        return seal(self._codec, self._at(task, "result"), encode_value(value))
