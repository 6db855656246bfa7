"""Workflow tasks a hub pushes over core NATS (the hub's ``_push`` has the whole argument).

A worker subscribes to ``imm.push.<t>.<q>.<worker>`` (runs it has cached) and, in the queue
group ``workers``, to ``imm.push.<t>.<q>`` (runs nobody has). It answers ``ok:<worker>`` (and
its ``instance``, the process, which its registration in ``imm-workers`` names too) and
starts when it has a free workflow slot, ``busy`` otherwise; the hub then publishes the task
durably. A task whose result is on its way to a hub waits and holds no slot: how many of
those there are is bounded by what the hubs take in. A pushed task has no JetStream message
to ack: finishing it is acking it, and handing it back (a failure retried later, a graceful
stop) publishes it durably to the queue's shared subject with the id a durable copy would
have had, ``<run>:<wft>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from immortal._errors import PayloadError
from immortal._inputs import BUSY, OK
from immortal._names import Names
from immortal._transient import publish
from immortal._wire import WorkflowTask, decode

__all__ = ["PushedTask", "Pushes"]

log = logging.getLogger(__name__)


class PushedTask:
    """A pushed workflow task, with the ``ack``/``nak`` of a JetStream message."""

    def __init__(self, pushes: Pushes, task: WorkflowTask, data: bytes) -> None:
        self.pushes = pushes
        self.task = task
        self.data = data
        self.handed_back = False
        self.busy = True  # holds one of the worker's slots

    def reporting(self) -> None:
        """Its result is on its way to a hub: it waits, and holds no slot while it does."""
        self.pushes.free(self)

    async def ack(self) -> None:
        """Done: nothing durable was written for it, so there is nothing to delete."""

    async def nak(self, delay: float | None = None) -> None:
        """Hand it back: published durably after ``delay`` seconds."""
        self.pushes.hand_back(self, delay or 0.0)


Handler = Callable[[WorkflowTask, PushedTask], Awaitable[None]]


class Pushes:
    """One worker's pushed workflow tasks: subscriptions, slots, hand-backs."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        tenant: str,
        worker_id: str,
        instance: str,
        slots: int,
        handle: Handler,
    ) -> None:
        self.nc = nc
        self.names = names
        self.tenant = tenant
        self.worker_id = worker_id
        self.instance = instance  # this process: its registration names it too
        self.slots = slots
        self._handle = handle
        self._subs: list[Any] = []
        self._running: dict[asyncio.Task[None], PushedTask] = {}
        self._handing: set[asyncio.Task[None]] = set()
        self._busy = 0  # pushed tasks holding a slot: not yet waiting for a hub's answer
        self._open = False
        self.taken = 0  # for tests

    async def serve(self, queue: str) -> None:
        self._open = True
        names, t = self.names, self.tenant
        own = await self.nc.subscribe(
            names.push_subject(t, queue, self.worker_id), cb=self._on_push
        )
        shared = await self.nc.subscribe(
            names.push_subject(t, queue), queue="workers", cb=self._on_push
        )
        self._subs += [own, shared]

    async def stop(self, grace: float) -> None:
        """Take no more; let running tasks finish within ``grace``; hand back the rest."""
        self._open = False
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        for task, pushed in list(self._running.items()):
            task.cancel()
            self.hand_back(pushed, 0.0)
        await asyncio.gather(*self._running, return_exceptions=True)
        # Hand-backs waiting out a retry delay go now: this worker will not be there later.
        for task in list(self._handing):
            task.cancel()
        await asyncio.gather(*self._handing, return_exceptions=True)

    async def _on_push(self, msg: Any) -> None:
        if not self._open or self._busy >= self.slots:
            with contextlib.suppress(Exception):
                await msg.respond(BUSY)
            return
        try:
            task = decode(WorkflowTask, msg.data)
        except PayloadError as exc:  # published durably, it fails where it is visible
            log.error("unreadable pushed workflow task: %s", exc)
            with contextlib.suppress(Exception):
                await msg.respond(BUSY)
            return
        # The answer goes out first: workflow code that blocks the loop must not hold it up.
        with contextlib.suppress(Exception):
            await msg.respond(OK + f":{self.worker_id}\0{self.instance}".encode())
        pushed = PushedTask(self, task, msg.data)
        runner = asyncio.create_task(self._run(pushed))
        self._running[runner] = pushed
        self._busy += 1
        runner.add_done_callback(lambda done: self.free(self._running.pop(done)))
        self.taken += 1

    async def _run(self, pushed: PushedTask) -> None:
        try:
            await self._handle(pushed.task, pushed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pushed workflow task of run %s failed; handed back", pushed.task.run_id)
            self.hand_back(pushed, 1.0)

    def free(self, pushed: PushedTask) -> None:
        if pushed.busy:
            pushed.busy = False
            self._busy -= 1

    def hand_back(self, pushed: PushedTask, delay: float) -> None:
        if pushed.handed_back:
            return
        pushed.handed_back = True
        task = asyncio.create_task(self._publish(pushed, delay))
        self._handing.add(task)
        task.add_done_callback(self._handing.discard)

    async def _publish(self, pushed: PushedTask, delay: float) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(delay)  # cut short by a stop: publish now
        task = pushed.task
        subject = self.names.task_subject(self.tenant, task.queue, "wf")
        headers = {"Nats-Msg-Id": f"{task.run_id}:{task.wft}"}
        try:
            await publish(self.nc, subject, pushed.data, headers=headers)
        except Exception as exc:  # the hub publishes it if this worker goes away
            log.warning("handing back workflow task of run %s: %s", task.run_id, exc)
