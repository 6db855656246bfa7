"""Request-reply and JetStream publishes on the hot path, without a timer per request.

nats-py's ``request`` (and ``JetStreamContext.publish``, which uses it) wraps every request
in ``asyncio.wait_for``: a timer handle armed and cancelled per message, plus a ``PubAck``
dataclass per publish. On the hub, which does several of these per transition, that was a
tenth of its CPU. Here the replies of one connection come to one wildcard inbox, and one
sweep every quarter second fails the requests whose time is up.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError

from immortal.security.violations import on_violation

__all__ = ["Requests"]

_SWEEP_S = 0.25
_by_connection: weakref.WeakKeyDictionary[NATS, Requests] = weakref.WeakKeyDictionary()


class Requests:
    """One connection's requests. ``await Requests.of(nc).request(...)``."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._next = 0
        self._waiting: dict[str, tuple[asyncio.Future[Msg], float, str]] = {}
        self._sub: asyncio.Future[Any] | None = None
        self._sweeping = False

    @classmethod
    def of(cls, nc: NATS) -> Requests:
        found = _by_connection.get(nc)
        if found is None:
            found = _by_connection[nc] = cls(nc)
            on_violation(nc, found._refused)
        return found

    def _refused(self, subject: str, error: Exception) -> None:
        """The broker refused a subject: its requests fail now, not at their timeout."""
        for future, _, sent_to in list(self._waiting.values()):
            if sent_to.lower() == subject and not future.done():
                future.set_exception(error)

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> Msg:
        """Like ``nc.request``: raises ``NoRespondersError`` or nats' ``TimeoutError``."""
        if self._sub is None:  # the first request subscribes; any others wait for that
            self._prefix = self.nc.new_inbox() + "."
            self._sub = asyncio.ensure_future(
                self.nc.subscribe(self._prefix + "*", cb=self._on_reply)
            )
        try:
            await self._sub
        except Exception:
            self._sub = None  # the next request subscribes again
            raise
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, time.monotonic() + timeout, subject)
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)
        try:
            await self.nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            return await future
        finally:
            self._waiting.pop(token, None)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        """A JetStream publish; returns the stream sequence, raises ``APIError`` as
        ``JetStreamContext.publish`` does."""
        reply = await self.request(subject, data, headers=headers)
        ack = json.loads(reply.data)
        if "error" in ack:
            APIError.from_error(ack["error"])  # raises the typed error
        return int(ack["seq"])

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self._prefix) :])
        if waiting is None or waiting[0].done():
            return  # too late: it timed out
        if not msg.data and (msg.headers or {}).get("Status") == "503":
            waiting[0].set_exception(NoRespondersError())
        else:
            waiting[0].set_result(msg)

    def _sweep(self) -> None:
        now = time.monotonic()
        for future, deadline, _ in list(self._waiting.values()):
            if deadline < now and not future.done():
                future.set_exception(NatsTimeout())
        self._sweeping = bool(self._waiting)
        if self._sweeping:
            asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)
