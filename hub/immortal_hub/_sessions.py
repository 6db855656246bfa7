"""The hubs' side of signing sessions (``immortal.security.sessions``).

A handshake is an input of kind ``session`` by request, checked like any signed input
(``_signatures``: key, window, owner, nonce) and required to be signed with Ed25519. The
hub makes a random 32-byte key, stores it under ``<tenant>.<session id>`` in
``imm-sessions`` (a file-backed bucket only hubs may read, whose entries expire with the
session), records the opening in ``IMM_AUDIT`` (never the key) and answers with the key
sealed to the X25519 public key the handshake carried. Any hub then checks a MAC under
the session by reading the entry once and keeping it until the session ends.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from nacl.public import PublicKey, SealedBox
from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._names import Names
from immortal._transient import key_value
from immortal.security.sessions import SessionMac

__all__ = ["SESSION_TTL_S", "HubSession", "SessionStore"]

log = logging.getLogger(__name__)

SESSION_TTL_S = 3600.0  # how long a session holds; a signer renews it before that


@dataclass(frozen=True)
class HubSession:
    key: bytes = field(repr=False)
    key_id: str
    ends: float  # seconds since the epoch, on the hub's clock
    mac: SessionMac = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", SessionMac(self.key))


class SessionStore:
    """The sessions one hub has made or met, backed by ``imm-sessions``."""

    def __init__(
        self,
        nc: Any,
        names: Names,
        *,
        ttl: float = SESSION_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc, self.names, self.ttl = nc, names, ttl
        self._clock = clock
        self._kv: KeyValue | None = None
        self._known: dict[tuple[str, str], HubSession] = {}
        self.opened = 0

    async def start(self) -> None:
        self._kv = await key_value(self.nc.jetstream(), self.names.bucket_sessions)

    async def open(self, tenant: str, key_id: str, x25519: bytes) -> tuple[str, bytes]:
        """A new session of ``key_id`` in ``tenant``: (its id, the answer's body, the key
        sealed to ``x25519``). ``ValueError`` if that is not an X25519 public key."""
        assert self._kv is not None, "not started"
        if len(x25519) != 32:
            raise ValueError("a session handshake carries a 32-byte X25519 public key")
        sealed = SealedBox(PublicKey(x25519))
        key, session_id = secrets.token_bytes(32), _b64url(secrets.token_bytes(16))
        ends = self._clock() + self.ttl
        record = {"key": key, "key_id": key_id, "ends": ends}
        await self._kv.create(f"{tenant}.{session_id}", msgpack.packb(record))
        self._known[(tenant, session_id)] = HubSession(key, key_id, ends)
        self.opened += 1
        answer = {"sid": session_id, "sealed": sealed.encrypt(key), "ttl": self.ttl}
        return session_id, msgpack.packb(answer)

    async def get(self, tenant: str, session_id: str) -> HubSession | None:
        """The session, if it holds now."""
        found = self._known.get((tenant, session_id))
        if found is None:
            found = await self._read(tenant, session_id)
        if found is None or found.ends < self._clock():
            self._known.pop((tenant, session_id), None)
            return None
        return found

    async def _read(self, tenant: str, session_id: str) -> HubSession | None:
        assert self._kv is not None, "not started"
        try:
            entry = await self._kv.get(f"{tenant}.{session_id}")
            raw = msgpack.unpackb(entry.value or b"")
            found = HubSession(bytes(raw["key"]), str(raw["key_id"]), float(raw["ends"]))
        except (KeyNotFoundError, JsNotFound):
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("session %s/%s unreadable (%s): refused", tenant, session_id, exc)
            return None
        if len(self._known) > 100_000:  # ended ones are dropped as met; bound the rest
            self._known.clear()
        self._known[(tenant, session_id)] = found
        return found


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
