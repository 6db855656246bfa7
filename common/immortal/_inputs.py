"""Sending an input to the hub: by request-reply when a hub answers, durably otherwise.

A worker's result needs no durable copy of its own: the task it answers stays unacked in
``IMM_TASKS`` until the hub has appended the result to history and replied. So results (and
starts) go to the hubs by core request-reply first, which spares ``IMM_IN`` one persisted
write and one ack each and a hop of latency. If no hub answers in time, or the hubs are
busy, the input is published to ``IMM_IN`` and waits there durably. Either way the hub
applies it once: inputs are idempotent by their id.
"""

from __future__ import annotations

import contextlib
import json
import logging

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError

from immortal._errors import ImmortalError, PayloadError
from immortal._jetstream import read_newest
from immortal._names import InputKind, Names, decode_token
from immortal._requests import Requests
from immortal._transient import retry_transient
from immortal._wire import StartWorkflow, decode
from immortal.security.connection import relays_reads, sender_of
from immortal.security.errors import PolicyDeniedError
from immortal.security.signing import (
    SignatureError,
    forget_session,
    refusal_in,
    session_refused,
    signed_headers,
)
from immortal.security.violations import violation_for

__all__ = [
    "BUSY",
    "DENIED",
    "OK",
    "REJECTED",
    "STALE",
    "StaleInput",
    "denied_reply",
    "find_queued_start",
    "policy_denied",
    "send_input",
]

log = logging.getLogger(__name__)

OK = b"ok"
BUSY = b"busy"
REJECTED = b"rejected:"
STALE = b"stale:"  # a heartbeat's attempt no longer counts
DENIED = b"denied:"  # the tenant's policy refused it: JSON {reason, rule_ids, policy_version}


class StaleInput(Exception):
    """The hub answered that the attempt this input belongs to no longer counts."""


async def send_input(
    nc: NATS,
    names: Names,
    tenant: str,
    queue: str,
    kind: InputKind,
    data: bytes,
    *,
    msg_id: str,
    rpc_timeout: float = 5.0,
) -> bytes | None:
    """Hand ``data`` to a hub; returns once it is applied or durably queued.

    Returns what a hub attached to its reply (see ``AppliedTransition``), if anything.
    """
    if len(data) > nc.max_payload:
        raise PayloadError(
            f"{kind} input of {len(data):,} bytes exceeds the server's max_payload of "
            f"{nc.max_payload:,} bytes"
        )
    sender = sender_of(nc)
    rpc = names.rpc_subject(tenant, queue, kind, sender)
    headers = signed_headers(nc, rpc, data, {"Nats-Msg-Id": msg_id})
    try:
        answered, reply = await _by_request(nc, rpc, data, rpc_timeout, headers)
    except SignatureError as exc:
        if not session_refused(exc, headers):
            raise
        forget_session(nc, rpc)  # its hubs lost it (or it ended): Ed25519 until a new one
        headers = signed_headers(nc, rpc, data, {"Nats-Msg-Id": msg_id}, per_message=True)
        answered, reply = await _by_request(nc, rpc, data, rpc_timeout, headers)
    if answered:
        return reply
    js = nc.jetstream()
    subject = names.input_subject(tenant, queue, kind, sender)
    # Signed anew for this subject; the same headers on each retry (a repeat is deduped).
    durable = signed_headers(nc, subject, data, {"Nats-Msg-Id": msg_id})

    async def publish() -> None:
        try:
            await js.publish(subject, data, headers=durable)
        except (NatsTimeout, TimeoutError):
            refused = violation_for(nc, subject)
            if refused is not None:
                raise refused from None
            raise
        except NoStreamResponseError as exc:
            # Nobody stores this subject: no stream at all (not transient), or a stream
            # whose leader is being elected (transient: retried).
            if not relays_reads(nc) and not await _stream_may_exist(js, names.stream_in):
                raise ImmortalError(
                    f"no stream {names.stream_in}: start a hub (`immortal hub`) once so it "
                    "creates Immortal's streams"
                ) from exc
            raise

    # Deduplicated by its msg id, so a repeat after a lost ack stores it once.
    await retry_transient(publish, what=subject)
    return None


async def find_queued_start(
    nc: NATS, names: Names, tenant: str, workflow_id: str, run_id: str | None = None
) -> tuple[str, str] | None:
    """(run id, queue) of a start of ``workflow_id`` (of that run, if given) that waits in
    ``IMM_IN`` for a hub, newest first; None if there is none. A start leaves ``IMM_IN``
    only once its run is in history."""
    subjects = names.input_kind_filter(tenant, "start")
    async with contextlib.aclosing(read_newest(nc, names.stream_in, subjects)) as queued:
        async for msg in queued:
            try:
                start = decode(StartWorkflow, msg.data)
            except PayloadError:
                continue  # a hub dead-letters it
            if start.workflow_id == workflow_id and run_id in (None, start.run_id):
                return start.run_id, decode_token(msg.subject.split(".")[3])
    return None


async def _by_request(
    nc: NATS, subject: str, data: bytes, timeout: float, headers: dict[str, str] | None
) -> tuple[bool, bytes | None]:
    """(whether a hub applied it, what it attached); not applied: send it durably."""
    try:
        reply = await Requests.of(nc).request(subject, data, timeout=timeout, headers=headers)
    except (NoRespondersError, NatsTimeout, TimeoutError):
        refused = violation_for(nc, subject)
        if refused is not None:
            raise refused from None
        return False, None
    if reply.data == OK:
        return True, None
    if reply.data.startswith(OK + b":"):
        return True, reply.data[len(OK) + 1 :]
    if reply.data.startswith(STALE):
        raise StaleInput(reply.data[len(STALE) :].decode(errors="replace").strip())
    if reply.data.startswith(REJECTED):
        reason = reply.data[len(REJECTED) :].decode(errors="replace").strip()
        raise refusal_in(reason) or PayloadError(reason)
    if reply.data.startswith(DENIED):
        raise policy_denied(reply.data[len(DENIED) :])
    return False, None  # busy, or the hub failed: the durable path


def denied_reply(reason: str, rule_ids: tuple[str, ...], policy_version: int) -> bytes:
    """The hub's answer to an input its tenant's policy refused."""
    body = {"reason": reason, "rule_ids": list(rule_ids), "policy_version": policy_version}
    return DENIED + json.dumps(body).encode()


def policy_denied(data: bytes) -> PolicyDeniedError:
    """The error for the body of a ``denied:`` reply (or a stored refusal)."""
    try:
        body = json.loads(data)
        return PolicyDeniedError(
            str(body["reason"]),
            rule_ids=tuple(str(r) for r in body.get("rule_ids") or ()),
            policy_version=body.get("policy_version"),
        )
    except (ValueError, KeyError, TypeError):
        return PolicyDeniedError(data.decode(errors="replace").strip() or "denied by policy")


async def _stream_may_exist(js: JetStreamContext, stream: str) -> bool:
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return False
    except Exception:  # the cluster cannot say now: assume it does
        return True
    return True
