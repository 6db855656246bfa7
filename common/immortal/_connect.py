"""Connecting to NATS, one node or a cluster, the same way in client, hub and worker.

nats-py takes a list of URLs (a comma-separated string is read as one URL), learns the
rest of a cluster from the server it connects to, and reconnects to another node when its
node goes away: subscriptions are re-sent, publishes wait in its buffer meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import StaleConnectionError

from immortal.security.connection import ConnectSecurity, remember_sender
from immortal.security.errors import AuthError
from immortal.security.violations import Violations

__all__ = ["connect", "server_urls"]

log = logging.getLogger(__name__)


def server_urls(servers: str | Sequence[str]) -> list[str]:
    """One URL, several separated by commas, or a list of either: a list of URLs.

    >>> server_urls("nats://a:4222, nats://b:4222")
    ['nats://a:4222', 'nats://b:4222']
    """
    parts = [servers] if isinstance(servers, str) else list(servers)
    urls = [url.strip() for part in parts for url in part.split(",") if url.strip()]
    if not urls:
        raise ValueError("no NATS server URL given")
    return urls


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    on_reconnect: Callable[[], None] | None = None,
    security: ConnectSecurity | None = None,
    relay_reads: bool | None = None,
    **options: Any,
) -> NATS:
    """Connect to any of ``servers``; reconnect to any node of the cluster, forever.

    ``on_reconnect`` is called after each reconnect (subscriptions are back; core messages
    published meanwhile were not delivered). ``security`` adds the token (asked for again
    at each reconnect), TLS and the inbox prefix that goes with the token; a refusal at
    connect is an :class:`~immortal.security.AuthError`. ``relay_reads`` (default: with a
    token) sends batched reads through the hubs' read relay; a hub reads directly.
    """
    events = _Events(name, on_reconnect, security)
    if security is not None:
        options = {**security.nats_options(), **options}
    nc = events.nc = NATS()
    try:
        settings: dict[str, Any] = {
            "servers": server_urls(servers),
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "disconnected_cb": events.disconnected,
            "reconnected_cb": events.reconnected,
            "error_cb": events.error,
            **options,
        }
        await nc.connect(**settings)
        events.connected = True
    except BaseException as exc:
        with contextlib.suppress(Exception):  # (a close after a failed handshake can hang)
            async with asyncio.timeout(2.0):
                await nc.close()  # nats-py leaves the socket of a refused connect open
        refusal = _refusal(exc, security) if not isinstance(exc, AuthError) else None
        if refusal is not None:
            raise refusal from exc
        raise
    token = security is not None and security.token is not None
    remember_sender(
        nc,
        security.sender() if security is not None else "anon",
        relay_reads=token if relay_reads is None else relay_reads,
    )
    events.violations.attach(nc)
    return nc


class _Events:
    """One connection's callbacks: logging, reconnects, and refusals."""

    def __init__(
        self,
        name: str,
        on_reconnect: Callable[[], None] | None,
        security: ConnectSecurity | None,
    ) -> None:
        self.name = name
        self.on_reconnect = on_reconnect
        self.security = security
        self.violations = Violations()
        self.connected = False
        self.nc: NATS | None = None

    async def disconnected(self) -> None:
        if self.nc is not None and not self.nc.is_closed:  # not when we close it ourselves
            log.warning("%s: disconnected from NATS; reconnecting", self.name)

    async def reconnected(self) -> None:
        assert self.nc is not None
        log.warning("%s: reconnected to NATS at %s", self.name, _where(self.nc))
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def error(self, exc: Exception) -> None:
        if not self.connected:  # refused at the first connect: tell the caller, no loop
            refusal = _refusal(exc, self.security)
            if refusal is not None:
                raise refusal
        # nats-py's default logs each with a traceback at ERROR, also the refused connects
        # and broken sockets that come with every node going away.
        if isinstance(exc, (OSError, StaleConnectionError, TimeoutError)):
            log.debug("%s: %r", self.name, exc)
        elif "authorization violation" in str(exc).lower():
            log.debug("%s: %r", self.name, exc)  # raised to the caller as an AuthError
        elif self.violations.record(exc):  # refused by the broker: the caller is told
            log.warning("%s: %s", self.name, exc)
        else:
            log.warning("%s: NATS error: %r", self.name, exc)


def _refusal(exc: BaseException, security: ConnectSecurity | None) -> AuthError | None:
    """A connect error that will not pass by trying again, as the error to raise: the
    server refused the token (why, as far as we can tell without the issuer's keys; the
    auth service's own reason is in its audit records), or the TLS handshake failed."""
    if isinstance(exc, NatsError) and "authorization violation" in str(exc).lower():
        from immortal.security.diagnose import diagnose_refusal

        return diagnose_refusal(security)
    if isinstance(exc, ssl.SSLError):
        from immortal.security.diagnose import diagnose_tls

        return diagnose_tls(exc, security)
    return None


def _where(nc: NATS) -> str:
    url = nc.connected_url
    return f"{url.hostname}:{url.port}" if url is not None else "?"
