"""A tenant's registry of signing keys: the public keys whose signatures its hubs accept.

Kept in ``imm-policy`` under ``<tenant>.keys`` (JSON), which only the tenant's admins
may write (``permissions``) and every hub watches. Each key has a validity span
(``not_before``/``not_after``, seconds since the epoch) and an owner (the principal
subject, and optionally the role, whose inputs it may sign), so a rollout is: add the
new key (``immortal keys add``), move the signers to it, retire the old one
(``immortal keys retire``, which sets its ``not_after`` to now).

>>> registry = KeyRegistry.from_bytes(entry.value)
>>> registry.lookup("k2", time.time())          # the key, or a SignatureError naming it
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from immortal.security.signing import (
    KEY_ID,
    SignatureError,
    SignatureRefusal,
    public_key_bytes,
)

__all__ = ["KeyRegistry", "RegisteredKey", "registry_key"]


def registry_key(tenant: str) -> str:
    """The key of ``tenant``'s registry in the ``imm-policy`` bucket."""
    return f"{tenant}.keys"


@dataclass(frozen=True)
class RegisteredKey:
    """One public key: ``subject``/``role`` name who may sign with it (empty: anyone of
    the tenant); ``added_by`` who registered it."""

    key_id: str
    public_key: str  # base64url, 32 bytes
    not_before: float = 0.0
    not_after: float | None = None
    subject: str = ""
    role: str = ""
    added_by: str = ""

    def __post_init__(self) -> None:
        if not KEY_ID.match(self.key_id):
            raise ValueError(f"key id {self.key_id!r} is not a valid key id (1-64 of A-Za-z0-9._-)")
        public_key_bytes(self.public_key)  # raises ValueError naming the problem

    def status(self, now: float) -> str:
        if now < self.not_before:
            return "not yet valid"
        if self.not_after is not None and now >= self.not_after:
            return "retired"
        return "valid"


@dataclass(frozen=True)
class KeyRegistry:
    keys: tuple[RegisteredKey, ...] = ()

    def lookup(self, key_id: str, now: float) -> RegisteredKey:
        """The key ``key_id`` if it may verify now; a :class:`SignatureError` naming the
        key id otherwise (unknown, retired, not yet valid)."""
        for key in self.keys:
            if key.key_id != key_id:
                continue
            status = key.status(now)
            if status == "retired":
                raise SignatureError(
                    SignatureRefusal.RETIRED_KEY, f"key id {key_id!r} is retired", key_id
                )
            if status == "not yet valid":
                raise SignatureError(
                    SignatureRefusal.KEY_NOT_YET_VALID,
                    f"key id {key_id!r} is not valid before {_iso(key.not_before)}",
                    key_id,
                )
            return key
        raise SignatureError(
            SignatureRefusal.UNKNOWN_KEY, f"key id {key_id!r} is not in the registry", key_id
        )

    def added(self, key: RegisteredKey) -> KeyRegistry:
        if any(k.key_id == key.key_id for k in self.keys):
            raise ValueError(
                f"key id {key.key_id!r} is already registered (retire it, use another)"
            )
        return KeyRegistry((*self.keys, key))

    def retired(self, key_id: str, at: float | None = None) -> KeyRegistry:
        """The registry with ``key_id``'s ``not_after`` set to ``at`` (now); the key stays
        listed, so a signature by it is refused as retired rather than unknown."""
        at = time.time() if at is None else at
        if not any(k.key_id == key_id for k in self.keys):
            raise ValueError(f"key id {key_id!r} is not in the registry")
        return KeyRegistry(
            tuple(
                replace(k, not_after=min(at, k.not_after or at)) if k.key_id == key_id else k
                for k in self.keys
            )
        )

    def to_bytes(self) -> bytes:
        return json.dumps({"keys": [asdict(k) for k in self.keys]}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> KeyRegistry:
        """A registry as stored; ``ValueError`` naming the problem if it cannot be read."""
        if not raw:
            return cls()
        try:
            doc = json.loads(raw)
            return cls(tuple(_key(k) for k in doc["keys"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable key registry: {exc}") from exc


def _key(raw: Mapping[str, Any]) -> RegisteredKey:
    known = {"key_id", "public_key", "not_before", "not_after", "subject", "role", "added_by"}
    return RegisteredKey(**{k: v for k, v in raw.items() if k in known})


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


async def read_registry(nc: Any, names: Any, tenant: str) -> tuple[KeyRegistry, int]:
    """``tenant``'s registry and its revision (0: none yet), by direct get: what a
    tenant's own connection may do."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError

    from immortal._transient import key_value

    kv = await key_value(nc.jetstream(), names.bucket_policy)
    try:
        entry = await kv.get(registry_key(tenant))
    except (KeyNotFoundError, KeyDeletedError) as exc:
        # Deleted: empty, but its delete marker is the revision a write must expect.
        deleted = getattr(exc, "entry", None)
        return KeyRegistry(), int(getattr(deleted, "revision", None) or 0)
    except NotFoundError:
        return KeyRegistry(), 0
    return KeyRegistry.from_bytes(entry.value), int(entry.revision or 0)


async def write_registry(
    nc: Any, names: Any, tenant: str, registry: KeyRegistry, revision: int
) -> bool:
    """Store ``registry`` if the stored one is still at ``revision`` (0: none yet); False
    when another write came first (read again). Only a tenant's admins may: anyone else
    gets the broker's refusal as a ``PermissionDeniedError`` at once."""
    from immortal._jetstream import is_wrong_last_sequence
    from immortal._requests import Requests

    subject = f"$KV.{names.bucket_policy}.{registry_key(tenant)}"
    headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
    try:
        await Requests.of(nc).publish(subject, registry.to_bytes(), headers)
    except Exception as exc:
        if is_wrong_last_sequence(exc):
            return False
        raise
    return True
