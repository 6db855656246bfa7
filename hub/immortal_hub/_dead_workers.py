"""Dead workers' tasks handed back at once, instead of after their whole lease.

Workers renew a short-TTL key in ``imm-workers`` listing the tasks they hold; when a key
expires (the server leaves a marker that the watch sees) or is deleted, each held task is
NAKed so that another worker gets it now, and the worker's cached runs' workflow tasks move
to every worker of the queue (``_sticky``). Redelivered work is fenced as usual. The same
watch tells the hub which workers are live (where to push, and which sticky subjects are
read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.js.kv import KeyValue

from immortal._codec import unpack
from immortal._errors import PayloadError
from immortal._names import Names, decode_token
from immortal_hub._metrics import HubMetrics
from immortal_hub._push import Pushes
from immortal_hub._sticky import move_sticky_tasks

__all__ = ["WorkerWatch"]

log = logging.getLogger("immortal_hub._hub")  # where these lines were always logged


class WorkerWatch:
    """This hub's view of ``imm-workers``: who is live, holding what."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        metrics: HubMetrics,
        running: Callable[[], bool],
        spawn: Callable[[Any], None],
    ) -> None:
        self.nc = nc
        self.names = names
        self._metrics = metrics
        self._running = running
        self._spawn = spawn
        self._held_by: dict[str, list[str]] = {}  # worker key -> ack subjects it holds
        self._unsticky: set[str] = set()  # live workers that read no sticky subject
        self.handed_back = 0  # tasks of dead workers handed back, for tests and metrics

    def live(self, tenant: str, queue: str, worker: str) -> bool:
        """Whether the watch has the worker's key."""
        return self.names.worker_key(tenant, queue, worker) in self._held_by

    def sticky(self, tenant: str, queue: str, worker: str) -> bool:
        """Whether the worker is live and consumes its own sticky subject."""
        key = self.names.worker_key(tenant, queue, worker)
        return key in self._held_by and key not in self._unsticky

    async def watch(self, kv: KeyValue, pushes: Pushes) -> None:
        while self._running():
            try:
                watcher = await kv.watchall()
                try:
                    while self._running():
                        try:
                            entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                        except (TimeoutError, nats.errors.TimeoutError):
                            continue
                        if entry is not None:
                            await self._update(entry, pushes)
                finally:
                    await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnects, server restarts: watch again
                log.debug("worker watch restarted: %s", exc)
                await asyncio.sleep(1.0)

    async def _update(self, entry: Any, pushes: Pushes) -> None:
        if entry.operation in (None, "PUT") and entry.value:
            try:
                registration = unpack(entry.value)
                self._held_by[entry.key] = list(registration.get("held", []))
                if registration.get("sticky") is False:
                    self._unsticky.add(entry.key)
                pushes.registered(entry.key, registration)
            except (PayloadError, AttributeError):
                log.warning("unreadable worker registration %s", entry.key)
            return
        pushes.gone(entry.key)
        self._unsticky.discard(entry.key)
        held = self._held_by.pop(entry.key, [])
        if held:
            log.warning("worker %s is gone; handing back %d task(s)", entry.key, len(held))
        tenant, queue, worker = (*entry.key.split(".", 2), "", "")[:3]  # <t>.<q>.<worker>
        where = {"tenant": tenant, "queue": decode_token(queue)}
        if worker:  # its cached runs' workflow tasks go to every worker of the queue
            self._spawn(
                move_sticky_tasks(
                    self.nc, self.names, tenant, decode_token(queue), decode_token(worker)
                )
            )
        for ack_subject in held:
            with contextlib.suppress(Exception):
                await self.nc.publish(ack_subject, b"-NAK")
            self.handed_back += 1
            self._metrics.handed_back.add(1, where)
