"""Refusals and policy decisions kept in ``IMM_AUDIT`` on ``<p>.audit.<tenant>``: when,
who (the verified principal, or what an unverified token claimed), what, the decision and
why. Never a token, a key or a payload (an input is named by its digest).

A message holds one record, or a batch of them (``{"records": [...]}``): the hubs write
the policy decisions they allow in batches (see ``immortal_hub._decision_log``). Readers
get records either way (:func:`records_of`, :func:`tail_audit`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from immortal._codec import unpack
from immortal._errors import PayloadError
from immortal._names import Names
from immortal._wire import _Model, encode

__all__ = [
    "UNVERIFIED_TENANT",
    "AuditRecord",
    "publish_audit",
    "publish_refusal",
    "read_audit",
    "records_of",
    "tail_audit",
]

log = logging.getLogger(__name__)

# Refusals before any identity is verified: no tenant can be trusted, so they are kept
# under a token no tenant can have (tenants hold no "_").
UNVERIFIED_TENANT = "_auth"


class AuditRecord(_Model):
    ts: float = Field(default_factory=time.time)
    action: str  # "connect", "workflow.start", "timer.fire", ...
    decision: str  # "allow" or "deny"
    reason: str  # a RefusalReason, or "policy" for a policy's decision
    message: str  # a sentence a person understands (a policy decision's reason)
    principal: dict[str, Any] | None = None  # Principal.record() when verified
    claimed: dict[str, Any] | None = None  # an unverified token's iss/sub/kid/alg
    where: dict[str, Any] = Field(default_factory=dict)  # client host, server, subject
    by: str = ""  # the service that decided
    # A policy's decision: what it was about, the deciding rules, the version of the
    # tenant's policy it used, and the digest of the input it read (never the input).
    resource: dict[str, Any] | None = None
    rule_ids: list[str] = Field(default_factory=list)
    policy_version: int | None = None
    input_digest: str | None = None


async def publish_audit(nc: Any, names: Names, tenant: str, record: AuditRecord) -> None:
    """Store ``record``; a failure is logged, never raised (auditing must not take the
    deciding service down), and the record is logged too."""
    log.info("audit %s %s %s: %s", tenant, record.action, record.decision, record.message)
    try:
        await nc.jetstream().publish(names.audit_subject(tenant), encode(record))
    except Exception as exc:
        log.warning("audit record not stored (%s): %s", exc, record.message)


async def publish_refusal(
    nc: Any,
    names: Names,
    tenant: str,
    *,
    action: str,
    reason: str,
    message: str,
    subject: str,
    by: str,
    **where: Any,
) -> None:
    """Store a refusal of what arrived on ``subject`` (``where`` adds to it: the key id,
    the check), as every refusing part of a hub records one."""
    record = AuditRecord(
        action=action,
        decision="deny",
        reason=reason,
        message=message,
        where={"subject": subject, **where},
        by=by,
    )
    await publish_audit(nc, names, tenant, record)


def records_of(data: bytes) -> list[AuditRecord]:
    """The records one ``IMM_AUDIT`` message holds (one, or a batch); unreadable ones are
    left out."""
    try:
        raw = unpack(data)
    except PayloadError:
        return []
    items = raw.get("records") if isinstance(raw, dict) and "action" not in raw else [raw]
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(AuditRecord.model_validate(item))
        except ValueError:
            log.debug("unreadable audit record skipped: %r", item)
    return out


async def read_audit(nc: Any, names: Names, tenant: str) -> list[AuditRecord]:
    """Every audit record of ``tenant`` (``UNVERIFIED_TENANT`` for refused connects)."""
    return [record async for _, record in tail_audit(nc, names, tenant)]


async def tail_audit(
    nc: Any, names: Names, tenant: str, *, from_seq: int = 1, follow: bool = False
) -> AsyncIterator[tuple[int, AuditRecord]]:
    """(stream sequence, record) of ``tenant``'s audit records from ``from_seq`` on, in
    the order they were stored; with ``follow``, then each new one, until the caller stops.
    A tenant's connection reads through the hubs' relay, which may ask the policy
    (``admin.audit``)."""
    from immortal._jetstream import tail

    subject = names.audit_subject(tenant)
    async for msg in tail(nc, names.stream_audit, subject, from_seq=from_seq, follow=follow):
        for record in records_of(msg.data):
            yield msg.seq, record
