"""Identity and isolation: verified tokens, principals and roles, the permissions each
role gets from the broker, TLS.

>>> verifier = TokenVerifier(AuthConfig.load())
>>> principal = await verifier.verify(token)   # or a TokenError naming the reason
>>> grants_for(principal, Names())             # what the broker lets it do
"""

from immortal.security.claims import map_claims, unverified_pid
from immortal.security.config import AuthConfig, TokenSource
from immortal.security.connection import ConnectSecurity, is_secure, sender_of
from immortal.security.errors import AuthError, PermissionDeniedError, RefusalReason, TokenError
from immortal.security.identity import (
    ANONYMOUS,
    ANONYMOUS_PID,
    HUB_PID,
    Principal,
    PrincipalKind,
    Role,
    principal_id,
)
from immortal.security.jwks import JwksCache
from immortal.security.permissions import Grants, grants_for, inbox_prefix, permission_table
from immortal.security.tls import TlsFiles
from immortal.security.tokens import TokenVerifier

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
    "Principal",
    "PrincipalKind",
    "RefusalReason",
    "Role",
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
