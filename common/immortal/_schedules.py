"""Schedules: start a workflow every interval or on a cron expression.

A schedule is two things: its definition in the ``imm-schedules`` bucket (what to start,
when, paused or not, and who made it) and, while it is active, one repeating NATS
scheduled message on ``imm.sched.<tenant>.<id>`` (``Nats-Schedule: @every 2s`` or a cron
expression). The server fires it into the queue's fired subject, where a hub starts one
run per firing, with an id derived from the firing, so a redelivered firing starts
nothing twice. Pausing removes the scheduled message; resuming publishes it again.

Changes (create, pause, resume, delete) are requests to a hub, on
``<p>.schedules.<tenant>.<sender>``: the hub decides them by the tenant's policy, then
writes the definition and arms or disarms the message (``immortal_hub.schedules``); a
tenant's connection may write neither itself. Reads are batched reads of the bucket,
through the read relay when auth is on (decided there as ``schedule.read``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from immortal._codec import encode_args, unpack
from immortal._definitions import workflow_definition
from immortal._errors import ImmortalError, NotSetUpError
from immortal._inputs import DENIED, OK, policy_denied
from immortal._jetstream import kv_scan
from immortal._requests import Requests
from immortal._timers import seconds
from immortal._wire import _Model, decode, encode, now_ms
from immortal.codec._fields import schedule_binding
from immortal.codec._sealing import seal
from immortal.security.connection import sender_of
from immortal.security.signing import refusal_in, signed_headers

if TYPE_CHECKING:
    from immortal._client import Client

__all__ = [
    "SCHEDULE_ERROR",
    "ScheduleChange",
    "ScheduleInfo",
    "ScheduleSpec",
    "Schedules",
    "nats_schedule",
]

ChangeOp = Literal["create", "pause", "resume", "delete"]
SCHEDULE_ERROR = b"error "  # the hub's reply to a change it cannot make, then why
_CHANGE_TIMEOUT_S = 10.0


class ScheduleSpec(_Model):
    """A schedule's definition, as stored in ``imm-schedules``."""

    schedule_id: str
    workflow_type: str
    queue: str
    input: bytes
    every: float | None = None  # seconds
    cron: str | None = None  # six fields: seconds first
    paused: bool = False
    execution_timeout: float | None = None
    created_ts: int = 0
    # Who made it: its verified claims as the hub knows them (never a token), set by the
    # hub, never the sender's word. Each firing's start is decided and acts for it.
    principal: dict[str, Any] | None = None


class ScheduleChange(_Model):
    """What a client asks a hub to do to a schedule; the hub answers ``ok:`` and the
    definition as stored, ``denied:`` and the policy's reason, or ``error`` and why."""

    op: ChangeOp
    schedule_id: str
    spec: ScheduleSpec | None = None  # create: the definition


@dataclass(frozen=True)
class ScheduleInfo:
    schedule_id: str
    workflow_type: str
    queue: str
    spec: str  # "@every 2s" or the cron expression
    paused: bool
    created_at: datetime


def nats_schedule(spec: ScheduleSpec) -> str:
    """The ``Nats-Schedule`` header value for a schedule."""
    if spec.cron is not None:
        return spec.cron
    assert spec.every is not None
    return f"@every {spec.every:g}s"


def _cron(expr: str) -> str:
    fields = expr.split()
    if len(fields) == 5:  # the usual five fields: fire at second 0
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(f"cron expression {expr!r} needs 5 or 6 fields")
    return " ".join(fields)


class Schedules:
    """``client.schedules``: create, list, pause, resume and delete schedules."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def create(
        self,
        schedule_id: str,
        workflow: Any,
        *args: Any,
        every: float | timedelta | None = None,
        cron: str | None = None,
        queue: str = "default",
        execution_timeout: float | timedelta | None = None,
    ) -> ScheduleInfo:
        """Start ``workflow(*args)`` every ``every`` or on ``cron``; replaces a schedule of
        the same id. Each run's workflow id is ``<schedule_id>@<firing time>``."""
        if (every is None) == (cron is None):
            raise ValueError("give exactly one of every= or cron=")
        every = seconds(every)
        if every is not None and (every < 1 or every != int(every)):
            raise ValueError("every= must be a whole number of seconds, at least 1")
        name = workflow if isinstance(workflow, str) else workflow_definition(workflow).name
        where = schedule_binding(self._client.tenant, schedule_id)
        spec = ScheduleSpec(
            schedule_id=schedule_id,
            workflow_type=name,
            queue=queue,
            input=seal(self._client.codec, where, encode_args(args)),
            every=every,
            cron=_cron(cron) if cron is not None else None,
            execution_timeout=seconds(execution_timeout),
            created_ts=now_ms(),
        )
        await self._client._register_queue(queue)
        return _info(await self._change("create", schedule_id, spec))

    async def list(self) -> list[ScheduleInfo]:
        c = self._client
        keys = await kv_scan(c.nc, c.names.bucket_schedules, f"{c.tenant}.*")
        out = [_info(ScheduleSpec.model_validate(unpack(value))) for _, value in keys]
        return sorted(out, key=lambda s: s.schedule_id)

    async def get(self, schedule_id: str) -> ScheduleSpec:
        c = self._client
        key = c.names.schedule_key(c.tenant, schedule_id)
        found = await kv_scan(c.nc, c.names.bucket_schedules, key)
        if not found:
            raise ImmortalError(f"no schedule {schedule_id!r}")
        return ScheduleSpec.model_validate(unpack(found[-1][1]))

    async def pause(self, schedule_id: str) -> None:
        """Stop starting runs (the definition stays; ``resume`` starts them again)."""
        await self._change("pause", schedule_id)

    async def resume(self, schedule_id: str) -> None:
        await self._change("resume", schedule_id)

    async def delete(self, schedule_id: str) -> None:
        await self._change("delete", schedule_id)

    async def _change(
        self, op: ChangeOp, schedule_id: str, spec: ScheduleSpec | None = None
    ) -> ScheduleSpec:
        """Ask a hub to make the change; the definition as the hub stored it (or found it,
        for a delete). Raises ``PolicyDeniedError`` when the tenant's policy refuses it."""
        c = self._client
        subject = c.names.schedule_change_subject(c.tenant, sender_of(c.nc))
        data = encode(ScheduleChange(op=op, schedule_id=schedule_id, spec=spec))
        headers = signed_headers(c.nc, subject, data, per_message=True)  # with a signer
        try:
            reply = await Requests.of(c.nc).request(
                subject, data, timeout=_CHANGE_TIMEOUT_S, headers=headers
            )
        except NoRespondersError as exc:
            raise NotSetUpError(
                f"no hub answered the schedule change on {subject}: start one (`immortal hub`)"
            ) from exc
        except NatsTimeout as exc:
            raise ImmortalError(
                f"no hub answered the schedule change of {schedule_id!r} within "
                f"{_CHANGE_TIMEOUT_S:g} s (it may have been made: list the schedules)"
            ) from exc
        return _read_reply(reply.data)


def _read_reply(data: bytes) -> ScheduleSpec:
    if data.startswith(OK + b":"):
        return decode(ScheduleSpec, data[len(OK) + 1 :])
    if data.startswith(DENIED):
        raise policy_denied(data[len(DENIED) :])
    if data.startswith(SCHEDULE_ERROR):
        reason = data[len(SCHEDULE_ERROR) :].decode(errors="replace")
        raise refusal_in(reason) or ImmortalError(reason)
    raise ImmortalError(f"the hub could not make the schedule change: {data[:200]!r}")


def _info(spec: ScheduleSpec) -> ScheduleInfo:
    return ScheduleInfo(
        schedule_id=spec.schedule_id,
        workflow_type=spec.workflow_type,
        queue=spec.queue,
        spec=nats_schedule(spec),
        paused=spec.paused,
        created_at=datetime.fromtimestamp(spec.created_ts / 1000, tz=UTC),
    )
