"""Keeping what a hub cannot apply: the input, with the reason, on ``imm.dlq.<t>.<q>.<kind>``
(``IMM_DLQ``), where ``immortal dlq`` and ``client.dead_letters`` find it."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from immortal._names import Names
from immortal._transient import publish

__all__ = ["keep_dead_letter"]

log = logging.getLogger(__name__)


async def keep_dead_letter(
    nc: NATS, names: Names, hub_id: str, subject: str, data: bytes, reason: str, *, ref: str
) -> None:
    """Store input ``data``, which arrived on ``subject``, as dead: ``ref`` names it (its
    stream sequence, or an id for one that came by request) and dedupes a repeat."""
    try:
        tenant, queue, kind = names.parse_input_subject(subject)
    except ValueError:
        tenant, queue, kind = "unknown", "unknown", "unknown"
    log.error("dead-lettered input %s (%s): %s", subject, ref, reason)
    headers = {
        "Nats-Msg-Id": f"dlq:{ref}",
        "Imm-Error": reason[:2000].replace("\r", " ").replace("\n", " "),
        "Imm-Subject": subject,
        "Imm-Ref": ref,
        "Imm-Hub": hub_id,
    }
    await publish(nc, names.dlq_subject(tenant, queue, kind), data, headers=headers)
