"""Timers due soon, fired from the hub's own clock, on time to the millisecond.

The server's scheduler fires at most every 250 ms, so a scheduled message alone is up to a
quarter second late. The hub that emits a timer due within its horizon also arms it here;
the scheduled message stays the durable backstop (a hub that dies takes its local timers
with it), and whichever fires second is recognised as already applied and changes nothing.
One local timer per timer subject, as the server keeps one schedule per subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from immortal._names import Names
from immortal._wire import TimerFired, now_ms
from immortal_hub._emissions import Emission

__all__ = ["LocalTimers"]

log = logging.getLogger(__name__)

_MAX_LOCAL_TIMERS = 100_000

Fire = Callable[[str, str, TimerFired], Awaitable[None]]


class LocalTimers:
    """The hub's local timers: subject -> (the timer message's id, its handle)."""

    def __init__(
        self,
        names: Names,
        horizon: float,
        fire: Fire,
        purge: Callable[[str], Awaitable[Any]],
        spawn: Callable[[Any], None],
    ) -> None:
        self.names = names
        self.horizon = horizon
        self._fire = fire
        self._purge = purge
        self._spawn = spawn
        self.armed: dict[str, tuple[str, asyncio.TimerHandle]] = {}
        self.running = False

    def arm(self, tenant: str, e: Emission) -> None:
        assert e.due_ms is not None and isinstance(e.body, TimerFired)
        delay = (e.due_ms - now_ms()) / 1000
        body = e.body
        subject = self.names.timer_subject(tenant, body.run_id, body.timer)
        current = self.armed.get(subject)
        if current is not None and current[0] == e.msg_id:
            return  # re-emitted: already armed
        if not self.running or delay > self.horizon:
            return
        if current is None and len(self.armed) >= _MAX_LOCAL_TIMERS:
            return
        self.disarm(subject)  # re-armed at a new due time: the new one replaces it
        handle = asyncio.get_running_loop().call_later(
            max(0.0, delay),
            lambda: self._spawn(self._fire_local(tenant, e.queue, subject, e.msg_id, body)),
        )
        self.armed[subject] = (e.msg_id, handle)

    def disarm(self, subject: str) -> None:
        armed = self.armed.pop(subject, None)
        if armed is not None:
            armed[1].cancel()

    def stop(self) -> None:
        self.running = False
        for _, handle in self.armed.values():
            handle.cancel()  # their scheduled messages fire them
        self.armed.clear()

    async def _fire_local(
        self, tenant: str, queue: str, subject: str, msg_id: str, fired: TimerFired
    ) -> None:
        if self.armed.get(subject, ("",))[0] == msg_id:
            del self.armed[subject]
        try:
            await self._fire(tenant, queue, fired)
        except Exception as exc:  # the scheduled message will fire it
            log.info("local timer %s: %s; the durable timer will fire it", fired.timer, exc)
            return
        if subject in self.armed:
            return  # re-armed meanwhile: its schedule is the new one, keep it
        with contextlib.suppress(Exception):  # spare the backstop's firing, if still in time
            await self._purge(subject)
