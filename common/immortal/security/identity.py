"""Who is acting: a principal from verified claims, and the built-in roles.

A principal is made once per connection, from a verified token (``tokens``); everything
that follows (the broker's permissions, the identity recorded in history, the policy
engine of the next issues) reads these fields and never the payload. The ``pid`` is a
short, stable id of (issuer, subject): the auth service grants a connection publish rights
only on input subjects that end in its own pid, so the broker itself says who sent each
input. The token id is left out on purpose: a process computes its pid from its own
token before it connects (for its inbox prefix and its input subjects), and a refreshed
token, used at the next reconnect, must give the same pid.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "ANONYMOUS",
    "ANONYMOUS_PID",
    "HUB_PID",
    "Principal",
    "PrincipalKind",
    "Role",
    "principal_id",
]

ANONYMOUS_PID = "anon"  # every input when auth is off
HUB_PID = "hub"  # inputs a hub sends on behalf of a run (a child's start, a parent's notice)


class Role(StrEnum):
    """Built-in roles. A principal holds roles in one tenant (``hub``: in every tenant)."""

    READER = "reader"  # read runs, history, logs, schedules, workers
    WRITER = "writer"  # reader + start, signal, cancel, terminate, schedules, retention
    WORKER = "worker"  # serve its queues: tasks, results, heartbeats, timers, logs
    ADMIN = "admin"  # writer + dead letters and tenant settings
    HUB = "hub"  # the hub service: the whole application account

    @classmethod
    def parse(cls, value: str) -> Role | None:
        try:
            return cls(value)
        except ValueError:
            return None


class PrincipalKind(StrEnum):
    USER = "user"  # a person or an application's client
    SERVICE = "service"  # a hub or a worker
    ANONYMOUS = "anonymous"  # auth is off


def principal_id(issuer: str, subject: str) -> str:
    """A short id of an identity, safe as a subject token and an inbox prefix: ``p`` and 16
    base32 characters (80 bits) of SHA-256 over issuer and subject."""
    digest = hashlib.sha256(f"{issuer}\0{subject}".encode()).digest()
    return "p" + base64.b32encode(digest[:10]).decode().lower()


@dataclass(frozen=True)
class Principal:
    """A verified identity. ``roles`` are built-in role names; ``queues`` bound a worker
    to the queues it may serve (empty: none; a worker token names its queues)."""

    subject: str
    tenant: str
    roles: frozenset[str]
    groups: frozenset[str] = frozenset()
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    token_id: str = ""
    issuer: str = ""
    kind: PrincipalKind = PrincipalKind.USER
    queues: tuple[str, ...] = ()
    expires_at: int | None = None  # seconds since the epoch
    pid: str = ""

    def __post_init__(self) -> None:
        if not self.pid:
            object.__setattr__(self, "pid", principal_id(self.issuer, self.subject))

    def has(self, role: Role) -> bool:
        return role.value in self.roles

    @property
    def can_write(self) -> bool:
        return bool({Role.WRITER, Role.ADMIN, Role.HUB} & set(map(Role.parse, self.roles)))

    @property
    def can_read(self) -> bool:
        return bool(self.roles)

    def record(self) -> dict[str, Any]:
        """What history and audit records say about who acted: never a token or a key."""
        out: dict[str, Any] = {
            "subject": self.subject,
            "tenant": self.tenant,
            "roles": sorted(self.roles),
            "kind": str(self.kind),
            "pid": self.pid,
        }
        if self.token_id:
            out["token_id"] = self.token_id
        if self.issuer:
            out["issuer"] = self.issuer
        return out

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> Principal:
        return cls(
            subject=str(raw.get("subject", "")),
            tenant=str(raw.get("tenant", "")),
            roles=frozenset(raw.get("roles") or ()),
            groups=frozenset(raw.get("groups") or ()),
            attributes=dict(raw.get("attributes") or {}),
            token_id=str(raw.get("token_id", "")),
            issuer=str(raw.get("issuer", "")),
            kind=PrincipalKind(raw.get("kind", PrincipalKind.USER)),
            queues=tuple(raw.get("queues") or ()),
            expires_at=raw.get("expires_at"),
            pid=str(raw.get("pid", "")),
        )

    def full_record(self) -> dict[str, Any]:
        """:meth:`record` with groups, attributes, queues and expiry: what the auth service
        keeps per pid for the hub (still no token)."""
        return {
            **self.record(),
            "groups": sorted(self.groups),
            "attributes": self.attributes,
            "queues": list(self.queues),
            "expires_at": self.expires_at,
        }


ANONYMOUS = Principal(
    subject="anonymous",
    tenant="",
    roles=frozenset({Role.ADMIN.value}),
    kind=PrincipalKind.ANONYMOUS,
    pid=ANONYMOUS_PID,
)
