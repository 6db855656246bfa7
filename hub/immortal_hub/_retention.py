"""Tenant retention: when a run closes, time the end of its history and logs; when that
time comes, purge them (and forget the run in the runs index)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from immortal._jetstream import last_message
from immortal._names import Names
from immortal._tenants import Retention, read_retention
from immortal._transient import retry_transient
from immortal._wire import RunState, TimerFired, Transition, decode, now_ms
from immortal.runs import find_closed_record
from immortal_hub._emissions import Emission
from immortal_hub._runs_index import RunsIndex

__all__ = ["Retentions"]

log = logging.getLogger(__name__)

_REREAD_MS = 10_000  # a tenant's setting is re-read at most this often


class Retentions:
    def __init__(
        self,
        nc: NATS,
        names: Names,
        runs: RunsIndex,
        publish: Callable[[str, Emission], Awaitable[None]],
        forget_cached: Callable[[str], None],
    ) -> None:
        self.nc = nc
        self.names = names
        self._runs = runs
        self._publish = publish
        self._forget_cached = forget_cached
        self._known: dict[str, tuple[int, Retention]] = {}  # tenant -> (read at, setting)

    async def arm(self, tenant: str, state: RunState) -> None:
        """A run closed: if its tenant keeps closed runs for a while only, time their end."""
        retention = await self._setting(tenant)
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
        js = self.nc.jetstream()
        if fired.timer == "retention-logs":
            subject = self.names.log_subject(tenant, fired.workflow_id, fired.run_id)
            await js.purge_stream(self.names.stream_logs, subject=subject)
            log.info("logs of run %s expired (tenant retention)", fired.run_id)
            return
        subject = self.names.history_subject(tenant, fired.workflow_id, fired.run_id)
        stream = self.names.stream_history
        newest = await retry_transient(
            lambda: last_message(self.nc, stream, subject, leader=True), what=subject
        )
        if newest is not None:  # the index forgets the run with its history
            state = decode(Transition, newest.data).state
            found = await find_closed_record(self.nc, self.names, tenant, state)
            if found is not None:
                await self._runs.forget(found[0].seq)
        await js.purge_stream(stream, subject=subject)
        self._forget_cached(subject)
        log.info("history of run %s expired (tenant retention)", fired.run_id)

    async def _setting(self, tenant: str) -> Retention:
        now = now_ms()
        known = self._known.get(tenant)
        if known is None or now - known[0] > _REREAD_MS:
            known = (now, await read_retention(self.nc.jetstream(), self.names, tenant))
            self._known[tenant] = known
        return known[1]
