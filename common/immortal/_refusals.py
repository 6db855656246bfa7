"""The refusal of a start that waited in ``IMM_IN``, told to its sender.

A start sent while every hub answered busy goes to ``IMM_IN``; a hub applies it later,
and if the tenant's policy refuses it then, there is no request to answer and no run
whose history would say so. The hub stores the refusal (the ``denied:`` reply's body) on
``<p>.audit.<tenant>.refused.<sender pid>.<run id>`` in ``IMM_AUDIT``: a subject only
that sender may read (its pid is in it), deduplicated per run. A client waiting for the
run (``WorkflowHandle.result``) looks there while the run has no history, and hears of
it at once through a subscription, and raises :class:`PolicyDeniedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client as NATS

from immortal._inputs import DENIED, policy_denied
from immortal._jetstream import last_message
from immortal._names import Names
from immortal.security.connection import is_secure, sender_of
from immortal.security.errors import PermissionDeniedError, PolicyDeniedError

__all__ = ["find_refusal", "store_refusal", "watch_refusal"]

log = logging.getLogger(__name__)


async def store_refusal(
    nc: NATS, names: Names, tenant: str, sender: str, run_id: str, denied: bytes
) -> None:
    """Keep the hub's ``denied:`` reply for the start of ``run_id`` where its sender looks."""
    subject = names.refusal_subject(tenant, sender, run_id)
    body = denied[len(DENIED) :] if denied.startswith(DENIED) else denied
    await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": f"refused:{run_id}"})


async def find_refusal(
    nc: NATS, names: Names, tenant: str, run_id: str
) -> PolicyDeniedError | None:
    """The refusal of this connection's start of ``run_id``, if a hub stored one."""
    if not is_secure(nc):
        return None  # without a verified sender no policy decides, and nothing is refused
    subject = names.refusal_subject(tenant, sender_of(nc), run_id)
    try:
        found = await last_message(nc, names.stream_audit, subject)
    except PermissionDeniedError:
        return None  # an auth service that predates these grants: wait as before
    return None if found is None else policy_denied(found.data)


async def watch_refusal(
    nc: NATS, names: Names, tenant: str, run_id: str, wake: asyncio.Queue[bytes]
) -> Any:
    """A subscription that puts ``b""`` ("look again") in ``wake`` when a refusal of this
    connection's start of ``run_id`` is stored; None without a verified sender."""
    if not is_secure(nc):
        return None

    async def refused(_: object) -> None:
        wake.put_nowait(b"")

    with contextlib.suppress(Exception):
        return await nc.subscribe(names.refusal_subject(tenant, sender_of(nc), run_id), cb=refused)
    return None
