"""Refusals (and, with issue 18's policies, every decision) kept in ``IMM_AUDIT`` on
``<p>.audit.<tenant>``: when, who (the verified principal, or what an unverified token
claimed), what, the decision and why. Never a token, a key or a payload."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import Field

from immortal._names import Names
from immortal._wire import _Model, decode, encode

__all__ = ["UNVERIFIED_TENANT", "AuditRecord", "publish_audit", "read_audit"]

log = logging.getLogger(__name__)

# Refusals before any identity is verified: no tenant can be trusted, so they are kept
# under a token no tenant can have (tenants hold no "_").
UNVERIFIED_TENANT = "_auth"


class AuditRecord(_Model):
    ts: float = Field(default_factory=time.time)
    action: str  # "connect", "workflow.start", "timer.fire", ...
    decision: str  # "allow" or "deny"
    reason: str  # a RefusalReason, or a rule id
    message: str  # a sentence a person understands
    principal: dict[str, Any] | None = None  # Principal.record() when verified
    claimed: dict[str, Any] | None = None  # an unverified token's iss/sub/kid/alg
    where: dict[str, Any] = Field(default_factory=dict)  # client host, server, subject
    by: str = ""  # the service that decided


async def publish_audit(nc: Any, names: Names, tenant: str, record: AuditRecord) -> None:
    """Store ``record``; a failure is logged, never raised (auditing must not take the
    deciding service down), and the record is logged too."""
    log.info("audit %s %s %s: %s", tenant, record.action, record.decision, record.message)
    try:
        await nc.jetstream().publish(names.audit_subject(tenant), encode(record))
    except Exception as exc:
        log.warning("audit record not stored (%s): %s", exc, record.message)


async def read_audit(nc: Any, names: Names, tenant: str) -> list[AuditRecord]:
    """Every audit record of ``tenant`` (``UNVERIFIED_TENANT`` for refused connects)."""
    from immortal._jetstream import read_subject

    subject = names.audit_subject(tenant)
    return [
        decode(AuditRecord, m.data) async for m in read_subject(nc, names.stream_audit, subject)
    ]
