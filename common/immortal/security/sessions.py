"""Signing sessions: one Ed25519 handshake, then a MAC on every input.

A per-message Ed25519 signature costs the sender ~40 µs and the hub ~80 µs of CPU in a
tight loop, two to three times that between other work, on every input; on a 2-core
machine that took a third of the hub's throughput (docs/security.md, "What signing
costs"). So a signer opens a session, as TLS does: it sends one input of kind
``session`` by request, signed with its Ed25519 key as any other and carrying a fresh
X25519 public key; the hub checks it like any input (key, window, owner, nonce), makes a
32-byte session key, stores it in ``imm-sessions`` (readable by hubs only) and answers
with the key sealed to that X25519 key (only the hubs' own copy, in the bucket, is not
sealed). From then
on the signer authenticates each input with HMAC-SHA256 under the session key, over the
same signature base (subject, covered headers, body digest, created, expires, nonce, key
id, plus the session id), and any hub checks it with a dictionary lookup and a hash.

What stays the same: the key id of the registry is in every input (history records it),
its owner is checked, a retired key's sessions are refused with it at once, the window
and the nonce refuse replays. What changes: a hub holds the session key, so a MAC proves
the input came from the key's holder *to the hubs*, not to a third party (no
non-repudiation); ``Signer(sessions=False)`` signs every input with Ed25519 instead.

Until its session is open (the first input of a connection, a rotation to a new key, a
session about to expire) a signer signs with Ed25519, so nothing waits for the
handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
from nacl.public import PrivateKey, SealedBox

__all__ = [
    "SESSION_ALG",
    "SESSION_KIND",
    "Session",
    "SessionBook",
    "SessionMac",
    "open_session_reply",
]

log = logging.getLogger(__name__)

SESSION_ALG = "hmac-sha256"
SESSION_KIND = "session"  # the input kind of a handshake (``imm.rpc.<t>.<q>.session.<pid>``)
RENEW_BEFORE_S = 300.0  # a session this close to its end is replaced (in the background)
_RETRY_S = 30.0  # after a failed handshake, sign with Ed25519 this long before trying again
_TIMEOUT_S = 5.0


class SessionMac:
    """HMAC-SHA256 under one session key, keyed once: ``hmac.digest`` looks SHA-256 up in
    OpenSSL on every call, which between a hub's other work cost ~20 µs an input; a copy
    of a keyed ``hmac`` object costs a few."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, data: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(data)
        return mac.digest()


@dataclass(frozen=True)
class Session:
    """A session the hubs know: its id, its key (never logged), the registry key id it
    was opened with, and until when it holds on this process's monotonic clock."""

    session_id: str
    key: bytes = field(repr=False)
    key_id: str
    until: float  # time.monotonic()
    mac: SessionMac = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", SessionMac(self.key))

    def usable(self, key_id: str, now: float) -> bool:
        return self.key_id == key_id and now < self.until


@dataclass
class SessionBook:
    """A signer's sessions, by tenant; the handshakes under way."""

    sessions: dict[str, Session] = field(default_factory=dict)
    _opening: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _failed_at: dict[str, float] = field(default_factory=dict)

    def session(self, tenant: str, key_id: str) -> Session | None:
        """The session to authenticate an input of ``tenant`` with, if one is open for
        ``key_id``."""
        found = self.sessions.get(tenant)
        return found if found is not None and found.usable(key_id, time.monotonic()) else None

    def wants(self, tenant: str, key_id: str) -> bool:
        """Whether a handshake for ``tenant`` should start now."""
        if tenant in self._opening:
            return False
        now = time.monotonic()
        if now - self._failed_at.get(tenant, -_RETRY_S) < _RETRY_S:
            return False
        found = self.sessions.get(tenant)
        return found is None or found.key_id != key_id or found.until - now < RENEW_BEFORE_S

    def forget(self, tenant: str) -> None:
        """Drop ``tenant``'s session (a hub no longer knows it): sign with Ed25519 until
        a new one opens."""
        self.sessions.pop(tenant, None)
        self._failed_at[tenant] = time.monotonic()

    def open(self, nc: Any, tenant: str, subject: str, key_id: str, sign: Any) -> None:
        """Start a handshake on ``nc`` in the background (``subject``: the handshake's,
        ``sign(subject, body)``: the Ed25519 headers for it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # signing outside a loop: nothing to open a session with
            return
        task = loop.create_task(self._handshake(nc, tenant, subject, key_id, sign))
        self._opening[tenant] = task

    async def _handshake(self, nc: Any, tenant: str, subject: str, key_id: str, sign: Any) -> None:
        from immortal._requests import Requests

        secret = PrivateKey.generate()
        body = msgpack.packb({"x25519": bytes(secret.public_key)})
        try:
            reply = await Requests.of(nc).request(
                subject, body, timeout=_TIMEOUT_S, headers=sign(subject, body)
            )
            session = open_session_reply(reply.data, secret, key_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no hub, an older hub, a refusal: Ed25519 goes on
            self._failed_at[tenant] = time.monotonic()
            log.info("tenant %s: no signing session (%s): each input signed", tenant, exc)
            return
        finally:
            self._opening.pop(tenant, None)
        self.sessions[tenant] = session
        log.debug("signing session %s opened for key id %s", session.session_id, key_id)

    async def close(self) -> None:
        for task in list(self._opening.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def open_session_reply(data: bytes, secret: PrivateKey, key_id: str) -> Session:
    """The session a hub's answer to a handshake opens; ``ValueError`` for any other
    answer (the hub's rejection, in its own words)."""
    if not data.startswith(b"ok:"):
        raise ValueError(data.decode(errors="replace")[:200] or "empty answer")
    try:
        raw = msgpack.unpackb(data[3:])
        key = SealedBox(secret).decrypt(bytes(raw["sealed"]))
        ttl = float(raw["ttl"])
        session_id = str(raw["sid"])
    except Exception as exc:
        raise ValueError(f"unreadable session answer: {type(exc).__name__}") from None
    if len(key) != 32:
        raise ValueError("a session key is 32 bytes")
    return Session(session_id, key, key_id, time.monotonic() + ttl)
