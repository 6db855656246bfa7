"""Connecting to NATS, one node or a cluster, the same way in client, hub and worker.

nats-py takes a list of URLs (a comma-separated string is read as one URL), learns the
rest of a cluster from the server it connects to, and reconnects to another node when its
node goes away: subscriptions are re-sent, publishes wait in its buffer meanwhile.

The first connect is ours to manage: with ``max_reconnect_attempts=-1`` nats-py retries it
forever, reporting each refused attempt only to the error callback, so a wrong URL would
hang without a word. Here the first failed attempt is logged at once (WARNING, with its
reason), the attempts go in rounds with a growing pause between them (each round logged at
INFO), and a ``timeout`` gives up with :class:`ServerUnreachableError`. A connection that
was up once reconnects as nats-py does, forever. A refusal that trying again cannot mend
(the token refused, a TLS handshake failed) ends the first connect at once with an
:class:`~immortal.security.AuthError` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError, StaleConnectionError
from nats.errors import Error as NatsError

from immortal._errors import ServerUnreachableError
from immortal.security.connection import ConnectSecurity, forget_direct, remember_sender
from immortal.security.errors import AuthError
from immortal.security.signing import attach_signer
from immortal.security.violations import Violations

__all__ = ["connect", "display_urls", "server_urls"]

log = logging.getLogger(__name__)

_ROUND_S = 2.5  # one round of attempts; within it nats-py tries each server every 0.5 s
_FIRST_PAUSE_S = 1.0  # between rounds, doubling
_MAX_PAUSE_S = 30.0
_ERRNO = re.compile(r"\[Errno (-?\d+)\]")


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


def display_urls(servers: str | Sequence[str]) -> str:
    """The URLs for a message: without the user and password a URL may carry.

    >>> display_urls("nats://me:secret@a:4222,nats://b:4222")
    'nats://a:4222, nats://b:4222'
    """
    shown = []
    for url in server_urls(servers):
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        netloc = parts.netloc.rpartition("@")[2]
        shown.append(urlunsplit(parts._replace(netloc=netloc)))
    return ", ".join(shown)


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    on_reconnect: Callable[[], None] | None = None,
    timeout: float | None = None,
    security: ConnectSecurity | None = None,
    relay_reads: bool | None = None,
    **options: Any,
) -> NATS:
    """Connect to any of ``servers``; reconnect to any node of the cluster, forever.

    Until the first connect succeeds, say why it fails and keep trying (with a growing
    pause), or, with ``timeout``, give up after that many seconds with
    :class:`ServerUnreachableError`. ``on_reconnect`` is called after each reconnect
    (subscriptions are back; core messages published meanwhile were not delivered).
    ``security`` adds the token (asked for again at each reconnect), TLS and the inbox
    prefix that goes with the token; ``relay_reads`` (default: with a token) sends batched
    reads through the hubs' read relay (a hub reads directly). ``options`` go to nats-py.
    """
    if security is not None:
        options = {**security.nats_options(), **options}
    urls = server_urls(servers)
    where = display_urls(urls)
    state = _FirstConnect(name, where)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause = _FIRST_PAUSE_S
    while True:
        window = _ROUND_S if deadline is None else max(0.0, deadline - loop.time())
        violations = Violations()
        nc = await _try_connect(
            urls, name, window, state, on_reconnect, _Refusals(security, violations), options
        )
        if nc is not None:
            if state.failures:
                log.info("%s: connected to NATS at %s", name, _where(nc))
            token = security is not None and security.token is not None
            remember_sender(
                nc,
                security.sender() if security is not None else "anon",
                relay_reads=token if relay_reads is None else relay_reads,
            )
            attach_signer(nc, security.signer if security is not None else None)
            violations.attach(nc)
            return nc
        if deadline is not None:
            raise ServerUnreachableError(
                f"cannot reach NATS at {where} within {timeout:g} s: {state.reason}"
            )
        log.info(
            "%s: still waiting for NATS at %s (%s); trying again in %g s",
            name, where, state.reason, pause,
        )  # fmt: skip
        await asyncio.sleep(pause)
        pause = min(pause * 2, _MAX_PAUSE_S)


class _FirstConnect:
    """What the attempts so far have told: how many failed, and the last reason."""

    def __init__(self, name: str, where: str) -> None:
        self.name = name
        self.where = where
        self.failures = 0
        self.reason = "no answer"

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.reason = _reason(exc)
        if self.failures == 1:
            log.warning("%s: waiting for NATS at %s (%s)", self.name, self.where, self.reason)


class _Refusals:
    """What the broker refuses: at the first connect, the token or the handshake (raised:
    trying again cannot mend it); later, subjects (kept for the caller that caused them)."""

    def __init__(self, security: ConnectSecurity | None, violations: Violations) -> None:
        self.security = security
        self.violations = violations

    def at_connect(self, exc: BaseException) -> AuthError | None:
        if isinstance(exc, NatsError) and "authorization violation" in str(exc).lower():
            from immortal.security.diagnose import diagnose_refusal

            return diagnose_refusal(self.security)
        if isinstance(exc, ssl.SSLError):
            from immortal.security.diagnose import diagnose_tls

            return diagnose_tls(exc, self.security)
        return None


async def _try_connect(
    urls: list[str],
    name: str,
    window: float,
    first: _FirstConnect,
    on_reconnect: Callable[[], None] | None,
    refusals: _Refusals,
    options: dict[str, Any],
) -> NATS | None:
    """One round: nats-py's own attempts for ``window`` seconds; None if none got through."""
    nc = NATS()
    connected = False

    async def disconnected() -> None:
        if connected and not nc.is_closed:  # not when we close it ourselves
            log.warning("%s: disconnected from NATS; reconnecting", name)

    async def reconnected() -> None:
        log.warning("%s: reconnected to NATS at %s", name, _where(nc))
        forget_direct(nc)  # the new connection's grants may differ (a policy changed)
        if on_reconnect is not None:
            on_reconnect()

    async def error(exc: Exception) -> None:
        if not connected:
            refusal = refusals.at_connect(exc)
            if refusal is not None:
                raise refusal  # out of nats-py's retrying: the caller is told why
            first.failed(exc)
        # nats-py's default logs each with a traceback at ERROR, also the refused connects
        # and broken sockets that come with every node going away.
        elif isinstance(exc, (OSError, StaleConnectionError, TimeoutError)):
            log.debug("%s: %r", name, exc)
        elif refusals.violations.record(exc):  # a subject refused: the caller is told
            log.warning("%s: %s", name, exc)
        else:
            log.warning("%s: NATS error: %r", name, exc)

    try:
        async with asyncio.timeout(window):
            await nc.connect(
                urls,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int, slept as is
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                **options,
            )
        connected = True
        return nc
    except TimeoutError:
        return None
    finally:
        if not connected:  # a round cut short, refused, or cancelled (Ctrl-C)
            with contextlib.suppress(Exception):  # after a failed handshake it can hang
                async with asyncio.timeout(2.0):
                    await asyncio.shield(nc.close())


def _reason(exc: BaseException) -> str:
    """Why an attempt failed, in a few words ("connection refused")."""
    if isinstance(exc, AuthorizationError):
        return "authorization violation"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "no answer"
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:  # asyncio's "Multiple exceptions: [Errno 111] ..." (IPv6 and IPv4)
        found = _ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
    if code is not None and code in errno.errorcode:
        return os.strerror(code).lower()
    text = str(exc).strip()
    return text.removeprefix("nats: ").strip("'") or type(exc).__name__


def _where(nc: NATS) -> str:
    url = nc.connected_url
    return f"{url.hostname}:{url.port}" if url is not None else "?"
