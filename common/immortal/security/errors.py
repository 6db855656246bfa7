"""Typed refusals: each names its reason, never the token."""

from __future__ import annotations

from enum import StrEnum

from immortal._errors import ImmortalError

__all__ = [
    "AuthError",
    "PermissionDeniedError",
    "PolicyDeniedError",
    "RefusalReason",
    "TlsError",
    "TokenError",
]


class RefusalReason(StrEnum):
    NO_TOKEN = "no_token"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KID = "unknown_kid"
    ALG_NOT_ALLOWED = "alg_not_allowed"
    MISSING_CLAIM = "missing_claim"
    NO_ROLE = "no_role"
    KEYS_UNAVAILABLE = "keys_unavailable"
    REFUSED = "refused"  # the server said no and we cannot tell why from here
    PERMISSION = "permission"
    TLS = "tls"
    SIGNATURE = "signature"  # an input's signature (``signing``)


class AuthError(ImmortalError):
    """Authentication or authorization failed; ``reason`` says which check."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TokenError(AuthError):
    """A token was refused: expired, wrong issuer, bad signature, ..."""


class PermissionDeniedError(AuthError):
    """The broker refused an operation this identity holds no permission for."""

    def __init__(self, message: str) -> None:
        super().__init__(RefusalReason.PERMISSION, message)


class PolicyDeniedError(PermissionDeniedError):
    """The tenant's policy refused the request: ``str()`` is the decision's reason, which
    names the deciding rules and the policy version (also in ``rule_ids`` and
    ``policy_version``).

    >>> try:
    ...     await client.start(refund, {"amount": 12_000})
    ... except PolicyDeniedError as e:
    ...     print(e)  # denied: input.amount 12,000 exceeds the 10,000 limit ... (rule ...)
    """

    def __init__(
        self, reason: str, *, rule_ids: tuple[str, ...] = (), policy_version: int | None = None
    ) -> None:
        super().__init__(reason)
        self.rule_ids = rule_ids
        self.policy_version = policy_version


class TlsError(AuthError):
    """The TLS handshake failed: no client certificate, one from another CA, or a server
    certificate we do not trust."""

    def __init__(self, message: str) -> None:
        super().__init__(RefusalReason.TLS, message)
