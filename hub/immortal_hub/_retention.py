"""Per-tenant retention of closed runs: a durable timer at the close, a purge when it fires.

``client.set_retention(history=, logs=)`` writes the tenant's setting; when a run closes,
its hub reads the setting (cached 10 s) and arms ``retention-history`` / ``retention-logs``
for the close time plus each period. When they fire, the hub purges the run's history or
log subject and deletes the run's closed record from the runs index. Open runs are never
expired.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from immortal._jetstream import last_message
from immortal._names import Names
from immortal._tenants import Retention, read_retention
from immortal._transient import key_value, retry_transient
from immortal._wire import RunState, TimerFired, Transition, decode, now_ms
from immortal.runs import find_closed_record
from immortal_hub._emissions import Emission
from immortal_hub._runs_index import RunsIndex

__all__ = ["Retentions"]

log = logging.getLogger(__name__)

_REREAD_MS = 10_000


class Retentions:
    """Arms and carries out the retention of one hub's closed runs."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        runs: RunsIndex,
        publish: Callable[[str, Emission], Awaitable[None]],
        forget: Callable[[str], None],
    ) -> None:
        self._nc, self._names, self._runs = nc, names, runs
        self._publish = publish
        self._forget = forget  # a history subject purged: drop it from the hub's cache
        self._known: dict[str, tuple[int, Retention]] = {}  # tenant -> (read at, setting)

    async def setting(self, tenant: str) -> Retention:
        """The tenant's retention setting, re-read at most every 10 s."""
        now = now_ms()
        known = self._known.get(tenant)
        if known is None or now - known[0] > _REREAD_MS:
            kv = await key_value(self._nc.jetstream(), self._names.bucket_policy)
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
        js = self._nc.jetstream()
        if fired.timer == "retention-logs":
            subject = self._names.log_subject(tenant, fired.workflow_id, fired.run_id)
            await js.purge_stream(self._names.stream_logs, subject=subject)
            log.info("logs of run %s expired (tenant retention)", fired.run_id)
            return
        subject = self._names.history_subject(tenant, fired.workflow_id, fired.run_id)
        stream = self._names.stream_history
        newest = await retry_transient(
            lambda: last_message(self._nc, stream, subject, leader=True), what=subject
        )
        if newest is not None:  # the index forgets the run with its history
            state = decode(Transition, newest.data).state
            found = await find_closed_record(self._nc, self._names, tenant, state)
            if found is not None:
                await self._runs.forget(found[0].seq)
        await js.purge_stream(stream, subject=subject)
        self._forget(subject)
        log.info("history of run %s expired (tenant retention)", fired.run_id)
