"""Claims → principal: tenant and roles from ``<tenant>:<role>`` entries (RFC 8725 says
nothing about this part; Temporal's default JWT claim mapper has the same shape)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from immortal.security.config import AuthConfig
from immortal.security.errors import RefusalReason, TokenError
from immortal.security.identity import Principal, PrincipalKind, Role, principal_id

__all__ = ["map_claims", "unverified_pid", "unverified_principal"]


def map_claims(config: AuthConfig, claims: Mapping[str, Any]) -> Principal:
    """The principal a verified token's claims describe; refuses a token with no
    built-in role, or roles in more than one tenant (a connection acts for one)."""
    pattern = re.compile(config.permissions_pattern)
    by_tenant: dict[str, set[str]] = {}
    for entry in _strings(claims.get(config.permissions_claim)):
        found = pattern.match(entry)
        if found is None:
            continue
        role = Role.parse(found.group("role"))
        if role is None:
            continue
        by_tenant.setdefault(found.group("tenant"), set()).add(role.value)
    system = by_tenant.pop(config.system_tenant, set())
    subject = str(claims.get("sub", ""))
    if Role.HUB.value in system:
        tenant, roles = config.system_tenant, {Role.HUB.value}
    elif len(by_tenant) == 1:
        tenant, roles = next(iter(by_tenant.items()))
    elif not by_tenant:
        raise TokenError(
            RefusalReason.NO_ROLE,
            f"token of {subject!r} grants no role (claim {config.permissions_claim!r} has no "
            "'<tenant>:<role>' entry with a role reader, writer, worker or admin)",
        )
    else:
        raise TokenError(
            RefusalReason.NO_ROLE,
            f"token of {subject!r} grants roles in several tenants "
            f"({', '.join(sorted(by_tenant))}): use one token per tenant",
        )
    service = bool({Role.WORKER.value, Role.HUB.value} & roles)
    exp = claims.get("exp")
    return Principal(
        subject=subject,
        tenant=tenant,
        roles=frozenset(roles),
        groups=frozenset(_strings(claims.get(config.groups_claim))),
        attributes={k: v for k, v in claims.items() if k in config.extra.get("attributes", ())},
        token_id=str(claims.get("jti", "")),
        issuer=str(claims.get("iss", "")),
        kind=PrincipalKind.SERVICE if service else PrincipalKind.USER,
        queues=tuple(_strings(claims.get(config.queues_claim))),
        expires_at=int(exp) if isinstance(exp, int | float) else None,
    )


def unverified_pid(token: str) -> str:
    """The pid a token will connect as, read without verifying it (the auth service
    verifies): what a process needs before it connects, for its inbox and subjects."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise TokenError(RefusalReason.MALFORMED, f"token is not a JWT: {exc}") from exc
    return principal_id(str(claims.get("iss", "")), str(claims.get("sub", "")))


def unverified_principal(token: str, config: AuthConfig | None = None) -> Principal:
    """The principal a token claims to be, read without verifying it: a client takes its
    tenant (and a worker its queues) from here, so that nobody passes a tenant by hand.
    The auth service verifies the same token at CONNECT."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise TokenError(RefusalReason.MALFORMED, f"token is not a JWT: {exc}") from exc
    return map_claims(config or _DEFAULT, claims)


_DEFAULT = AuthConfig()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []
