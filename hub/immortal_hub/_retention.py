"""Per-tenant retention of closed runs: a durable timer at the close, a purge when it fires.

``client.set_retention(history=, logs=)`` writes the tenant's setting; when a run closes,
its hub reads the setting (cached 10 s) and arms ``retention-history`` / ``retention-logs``
for the close time plus each period. When they fire, the hub purges the run's history or
log subject and removes the runs-index entry if it still names that run. Open runs are
never expired.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._codec import unpack
from immortal._names import Names
from immortal._tenants import Retention, read_retention
from immortal._transient import key_value
from immortal._wire import RunState, TimerFired, now_ms
from immortal_hub._emissions import Emission

__all__ = ["Retentions"]

log = logging.getLogger(__name__)

_REREAD_MS = 10_000


class Retentions:
    """Arms and carries out the retention of one hub's closed runs."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        runs_kv: KeyValue,
        publish: Callable[[str, Emission], Awaitable[None]],
        forget: Callable[[str], None],
    ) -> None:
        self._js, self._names, self._runs_kv = js, names, runs_kv
        self._publish = publish
        self._forget = forget  # a history subject purged: drop it from the hub's cache
        self._known: dict[str, tuple[int, Retention]] = {}  # tenant -> (read at, setting)

    async def setting(self, tenant: str) -> Retention:
        """The tenant's retention setting, re-read at most every 10 s."""
        now = now_ms()
        known = self._known.get(tenant)
        if known is None or now - known[0] > _REREAD_MS:
            kv = await key_value(self._js, self._names.bucket_policy)
            known = (now, await read_retention(kv, self._names, tenant))
            self._known[tenant] = known
        return known[1]

    async def arm(self, tenant: str, state: RunState) -> None:
        """A run closed: if its tenant keeps closed runs for a while only, time their end."""
        retention = await self.setting(tenant)
        for what, seconds in (("history", retention.history), ("logs", retention.logs)):
            if seconds is None:
                continue
            due = (state.closed_ts or now_ms()) + round(seconds * 1000)
            body = TimerFired(
                workflow_id=state.workflow_id,
                run_id=state.run_id,
                timer=f"retention-{what}",
                kind="retention",
            )
            msg_id = f"{state.run_id}:retention-{what}:{due}"
            await self._publish(tenant, Emission("timer", state.queue, msg_id, body, due))

    async def expire(self, tenant: str, fired: TimerFired) -> None:
        """A closed run's retention ran out: purge its history or its logs."""
        if fired.timer == "retention-logs":
            subject = self._names.log_subject(tenant, fired.workflow_id, fired.run_id)
            await self._js.purge_stream(self._names.stream_logs, subject=subject)
            log.info("logs of run %s expired (tenant retention)", fired.run_id)
            return
        key = self._names.run_key(tenant, fired.workflow_id)
        with contextlib.suppress(KeyNotFoundError, JsNotFound):
            entry = await self._runs_kv.get(key)
            if unpack(entry.value or b"").get("run_id") == fired.run_id:
                await self._runs_kv.delete(key, last=entry.revision)
        subject = self._names.history_subject(tenant, fired.workflow_id, fired.run_id)
        await self._js.purge_stream(self._names.stream_history, subject=subject)
        self._forget(subject)
        log.info("history of run %s expired (tenant retention)", fired.run_id)
