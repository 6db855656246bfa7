"""The read relay: batched reads for connections the broker keeps in one tenant.

JetStream's batched direct get takes its subject filter in the request body, where the
broker's permissions cannot see it, so a tenant's connection may not call it. It asks a
hub instead, on ``<p>.read.<tenant>.<sender>`` (a subject the broker lets only that
sender publish): the hub checks that the stream is one a tenant may read and that the
filter stays inside that tenant's subjects, and forwards the request with the sender's
reply subject, which must be the sender's own inbox. The server then answers the sender
directly, so the data never passes through the hub. A refusal is answered with status
403 and a description, and kept in ``IMM_AUDIT``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from immortal._names import Names
from immortal.security import inbox_prefix
from immortal.security.audit import publish_refusal

__all__ = ["ReadRelay"]

log = logging.getLogger(__name__)

_MAX_BATCH = 256
_MAX_MULTI = 1024  # the server's cap on subjects in one multi-subject read
_WILDCARDS = ("*", ">")


class ReadRelay:
    def __init__(self, nc: Any, names: Names, hub_id: str) -> None:
        self.nc = nc
        self.names = names
        self.hub_id = hub_id
        p = names
        # stream -> the subject kind (a token after the prefix), or the bucket for KV
        self._streams: dict[str, str] = {
            p.stream_history: f"{p.prefix}.hist",
            p.stream_logs: f"{p.prefix}.log",
            p.stream_dlq: f"{p.prefix}.dlq",
            p.stream_audit: f"{p.prefix}.audit",
            p.stream_runs: f"{p.prefix}.runs",
            p.stream_in: f"{p.prefix}.in",
        }
        for bucket in (
            p.bucket_workers,
            p.bucket_queues,
            p.bucket_schedules,
            p.bucket_policy,
            p.bucket_idem,
        ):
            self._streams[f"KV_{bucket}"] = f"$KV.{bucket}"
        self._sub: Any = None
        # The tenant's policy on reads (``policy._gate``): why it refuses, or None.
        self.policy: Callable[[str, str, str, list[str]], Awaitable[str | None]] | None = None
        self.forwarded = 0
        self.refused = 0

    async def start(self) -> None:
        p = self.names.prefix
        self._sub = await self.nc.subscribe(f"{p}.read.*.*", queue=f"{p}-hubs", cb=self._on_read)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_read(self, msg: Msg) -> None:
        _, _, tenant, sender = msg.subject.split(".")
        if not msg.reply or not msg.reply.startswith(inbox_prefix(sender) + "."):
            await self._audit(tenant, msg.subject, f"reply {msg.reply!r} is not the sender's inbox")
            return  # answering would send the data to a subject the sender chose
        try:
            req = json.loads(msg.data)
            stream = str(req["stream"])
            body = self._body(req)
        except (ValueError, KeyError, TypeError) as exc:
            await self._refuse(msg, tenant, f"malformed read request: {exc}")
            return
        reason = self._check(tenant, stream, body)
        if reason is not None:
            await self._refuse(msg, tenant, reason)
            return
        if self.policy is not None:
            filters = body.get("multi_last") or [body["next_by_subj"]]
            reason = await self.policy(tenant, sender, stream, filters)
            if reason is not None:  # the decision log has it already
                await self._refuse(msg, tenant, reason, audit=False)
                return
        await self.nc.publish(
            f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=msg.reply
        )
        self.forwarded += 1

    @staticmethod
    def _body(req: dict[str, Any]) -> dict[str, Any]:
        """The read to forward, in the forms the clients use: one filter from a sequence
        or a time, or the newest message of each of several filters; nothing else."""
        if "multi_last" in req:
            filters = [str(f) for f in req["multi_last"]]
            if not filters:
                raise ValueError("multi_last names no subject")
            return {"multi_last": filters, "batch": int(req.get("batch", _MAX_MULTI))}
        body: dict[str, Any] = {
            "next_by_subj": str(req["next_by_subj"]),
            "batch": int(req.get("batch", _MAX_BATCH)),
        }
        if "start_time" in req:
            body["start_time"] = str(req["start_time"])
        else:
            body["seq"] = max(int(req.get("seq", 1)), 1)
        return body

    def _check(self, tenant: str, stream: str, body: dict[str, Any]) -> str | None:
        root = self._streams.get(stream)
        if root is None:
            return f"stream {stream} is not readable by tenants"
        filters = body.get("multi_last") or [body["next_by_subj"]]
        limit = _MAX_MULTI if "multi_last" in body else _MAX_BATCH
        if not 0 < body["batch"] <= limit:
            return f"batch {body['batch']} out of range"
        head = f"{root}.{tenant}"
        for subject in filters:
            if subject != head and not subject.startswith(head + "."):
                return f"filter {subject!r} is outside tenant {tenant!r}'s subjects of {stream}"
        if any(w in head for w in _WILDCARDS):
            return f"filter {filters[0]!r} has a wildcard where the tenant belongs"
        return None

    async def _refuse(self, msg: Msg, tenant: str, reason: str, *, audit: bool = True) -> None:
        self.refused += 1
        with contextlib.suppress(Exception):
            await self.nc.publish(
                msg.reply or "", b"", headers={"Status": "403", "Description": reason[:200]}
            )
        if audit:
            await self._audit(tenant, msg.subject, reason)

    async def _audit(self, tenant: str, subject: str, reason: str) -> None:
        log.warning("read refused on %s: %s", subject, reason)
        await publish_refusal(
            self.nc,
            self.names,
            tenant,
            action="read",
            reason="out_of_tenant",
            message=reason,
            subject=subject,
            by=self.hub_id,
        )
