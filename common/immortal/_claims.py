"""Idempotent starts: a start with an idempotency key or a chosen workflow id first claims
a key in ``imm-idem`` naming its run (see docs/architecture.md, "Idempotent starts")."""

from __future__ import annotations

from enum import StrEnum
from functools import partial

from nats.aio.client import Client as NATS
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._codec import pack, unpack
from immortal._errors import ImmortalError, WorkflowAlreadyStartedError
from immortal._inputs import find_queued_start
from immortal._jetstream import last_message
from immortal._names import Names, encode_token
from immortal._transient import retry_transient
from immortal._wire import Transition, decode, now_ms

__all__ = ["IdReusePolicy", "claim_start"]

_ABANDONED_CLAIM_MS = 30_000  # a claim whose start never reached history


class IdReusePolicy(StrEnum):
    """What a start does when its workflow id already has a run."""

    ALLOW_AFTER_CLOSE = "allow_after_close"  # a new run once the previous one closed
    REJECT_DUPLICATE = "reject_duplicate"  # never reuse a workflow id
    RETURN_EXISTING = "return_existing"  # hand back the existing run


async def claim_start(
    nc: NATS,
    names: Names,
    tenant: str,
    kv: KeyValue,
    claim: str,
    workflow_id: str,
    run_id: str,
    policy: IdReusePolicy,
    idempotency_key: str | None,
) -> tuple[str, str, bool] | None:
    """Take ``claim`` in ``imm-idem`` (``kv``) for this run, or name the run that holds it
    (and whether that run has closed).

    A KV create (expected last sequence 0) is atomic and, unlike ``Nats-Msg-Id``, lasts
    beyond JetStream's duplicate window: the bucket keeps claims for 30 days.
    """
    key = f"{tenant}.{encode_token(claim)}"
    value = pack({"workflow_id": workflow_id, "run_id": run_id, "ts": now_ms()})
    for _ in range(10):
        try:
            await retry_transient(partial(kv.create, key, value), what=key)
            return None
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await retry_transient(partial(kv.get, key), what=key)
        except JsNotFound:  # gone meanwhile, or read from a replica not up to date yet
            continue
        prev = unpack(entry.value or b"")
        prev_run = (str(prev["workflow_id"]), str(prev["run_id"]))
        if prev_run[1] == run_id:
            return None  # ours: taken by a try whose answer was lost (an election)
        state = await _closed_or_missing(nc, names, tenant, *prev_run)
        abandoned = state is None and now_ms() - int(prev["ts"]) > _ABANDONED_CLAIM_MS
        if idempotency_key is not None or (
            not abandoned and policy is IdReusePolicy.RETURN_EXISTING
        ):
            return (*prev_run, bool(state))
        if not abandoned:
            if policy is IdReusePolicy.REJECT_DUPLICATE or not state:
                raise WorkflowAlreadyStartedError(*prev_run)
        try:
            await retry_transient(partial(kv.update, key, value, last=entry.revision), what=key)
            return None
        except KeyWrongLastSequenceError:
            continue  # another start took it meanwhile: look again
    raise ImmortalError(f"could not claim {claim!r}: too much contention")


async def _closed_or_missing(
    nc: NATS, names: Names, tenant: str, workflow_id: str, run_id: str
) -> bool | None:
    """True if the run closed, False if it runs or its start waits in ``IMM_IN`` (no hub
    has applied it yet: it is durable, not abandoned), None if it has neither."""
    subject = names.history_subject(tenant, workflow_id, run_id)
    stream = names.stream_history
    newest = await retry_transient(lambda: last_message(nc, stream, subject), what=subject)
    if newest is not None:
        return decode(Transition, newest.data).state.status.closed
    queued = await retry_transient(
        lambda: find_queued_start(nc, names, tenant, workflow_id, run_id), what="queued starts"
    )
    return False if queued is not None else None
