"""Every policy decision, to ``IMM_AUDIT`` (``<p>.audit.<tenant>``).

A deny is stored at once, one record per message: it is what an operator looks for, and a
refused client may look for it right after. Allows are the bulk (one per start, signal,
activity task...) and are stored in batches (``{"records": [...]}``), one message per
tenant every ``interval`` seconds or ``max_batch`` records, so logging them costs one
JetStream write per batch, not per decision. Readers see records either way
(``immortal.security.audit.records_of``). A hub that dies loses at most its unflushed
allows (``interval``); denies are never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from immortal._codec import pack
from immortal._names import Names
from immortal.security.audit import AuditRecord, publish_audit

__all__ = ["DecisionLog"]

log = logging.getLogger(__name__)


class DecisionLog:
    def __init__(
        self, nc: Any, names: Names, *, interval: float = 0.2, max_batch: int = 500
    ) -> None:
        self.nc = nc
        self.names = names
        self.interval = interval
        self.max_batch = max_batch
        self._allows: dict[str, list[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self.stored = 0  # records stored, for tests

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_every())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def record(self, tenant: str, record: dict[str, Any]) -> None:
        """Keep ``record`` (an :class:`AuditRecord`'s fields): a deny now, an allow with
        the next batch."""
        if record["decision"] != "allow":
            audit = AuditRecord.model_validate(record)
            self._spawn(publish_audit(self.nc, self.names, tenant, audit))
            self.stored += 1
            return
        batch = self._allows.setdefault(tenant, [])
        batch.append(record)
        if len(batch) >= self.max_batch:
            self._spawn(self._store(tenant, self._allows.pop(tenant)))

    async def flush(self) -> None:
        pending, self._allows = self._allows, {}
        await asyncio.gather(*(self._store(t, b) for t, b in pending.items() if b))

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:  # never take the hub down for its log
                log.warning("decision log flush failed: %s", exc)

    async def _store(self, tenant: str, batch: list[dict[str, Any]]) -> None:
        try:
            await self.nc.jetstream().publish(
                self.names.audit_subject(tenant), pack({"records": batch})
            )
            self.stored += len(batch)
        except Exception as exc:
            log.warning(
                "%d policy decisions of %s not stored in the audit: %s", len(batch), tenant, exc
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
