"""Identity and isolation: verified tokens, principals and roles, the permissions each
role gets from the broker, TLS, signed inputs.

>>> verifier = TokenVerifier(AuthConfig.load())
>>> principal = await verifier.verify(token)   # or a TokenError naming the reason
>>> grants_for(principal, Names())             # what the broker lets it do
"""

from typing import TYPE_CHECKING, Any

from immortal.security.claims import map_claims, unverified_pid
from immortal.security.config import AuthConfig, TokenSource
from immortal.security.connection import ConnectSecurity, is_secure, sender_of
from immortal.security.errors import (
    AuthError,
    PermissionDeniedError,
    PolicyDeniedError,
    RefusalReason,
    TlsError,
    TokenError,
)
from immortal.security.identity import (
    ANONYMOUS,
    ANONYMOUS_PID,
    HUB_PID,
    Principal,
    PrincipalKind,
    Role,
    principal_id,
)
from immortal.security.permissions import Grants, grants_for, inbox_prefix, permission_table
from immortal.security.signing import SignatureError, Signer, SigningKey
from immortal.security.tls import TlsFiles

if TYPE_CHECKING:
    from immortal.security.jwks import JwksCache
    from immortal.security.tokens import TokenVerifier


def __getattr__(name: str) -> Any:
    # Verification needs pyjwt and cryptography (a fifth of a second to import); clients,
    # workers and CLI commands that only present a token never load them.
    if name == "JwksCache":
        from immortal.security.jwks import JwksCache

        return JwksCache
    if name == "TokenVerifier":
        from immortal.security.tokens import TokenVerifier

        return TokenVerifier
    raise AttributeError(name)


__all__ = [
    "ANONYMOUS",
    "ANONYMOUS_PID",
    "HUB_PID",
    "AuthConfig",
    "AuthError",
    "ConnectSecurity",
    "Grants",
    "JwksCache",
    "PermissionDeniedError",
    "PolicyDeniedError",
    "Principal",
    "PrincipalKind",
    "RefusalReason",
    "Role",
    "SignatureError",
    "Signer",
    "SigningKey",
    "TlsError",
    "TlsFiles",
    "TokenError",
    "TokenSource",
    "TokenVerifier",
    "grants_for",
    "inbox_prefix",
    "is_secure",
    "map_claims",
    "permission_table",
    "principal_id",
    "sender_of",
    "unverified_pid",
]
