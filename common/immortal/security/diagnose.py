"""Why a connection was refused, told from the client's side. The server says only
"Authorization Violation"; the auth service keeps the real reason in ``IMM_AUDIT``. Here
the token is read without its signature (we hold no keys) for what can be told anyway:
none at all, expired, not yet valid, an algorithm nobody accepts."""

from __future__ import annotations

import ssl
import time

import jwt

from immortal.security.config import DEFAULT_ALGORITHMS
from immortal.security.connection import ConnectSecurity
from immortal.security.errors import AuthError, RefusalReason, TlsError, TokenError

__all__ = ["diagnose_refusal", "diagnose_tls"]


def diagnose_refusal(security: ConnectSecurity | None) -> AuthError:
    if security is None or security.token is None:
        return TokenError(
            RefusalReason.NO_TOKEN,
            "the server requires a token: pass --token, set $IMMORTAL_TOKEN or "
            "$IMMORTAL_TOKEN_COMMAND",
        )
    token = security.token.current()
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return TokenError(RefusalReason.MALFORMED, "the server refused the token: it is not a JWT")
    now = time.time()
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and exp < now:
        return TokenError(
            RefusalReason.EXPIRED, f"the server refused the token: it expired at {time.ctime(exp)}"
        )
    if isinstance(nbf, int | float) and nbf > now:
        return TokenError(
            RefusalReason.NOT_YET_VALID,
            f"the server refused the token: not valid before {time.ctime(nbf)}",
        )
    if header.get("alg") not in DEFAULT_ALGORITHMS:
        return TokenError(
            RefusalReason.ALG_NOT_ALLOWED,
            f"the server refused the token: algorithm {header.get('alg')!r} is not accepted",
        )
    return AuthError(
        RefusalReason.REFUSED,
        f"the server refused the token of {claims.get('sub')!r} (issuer {claims.get('iss')!r}): "
        "wrong issuer or audience, a bad signature, an unknown key, or no role; the auth "
        "service's audit record says which",
    )


def diagnose_tls(exc: ssl.SSLError, security: ConnectSecurity | None) -> TlsError:
    """A failed TLS handshake, in words: which side refused which certificate."""
    text = str(exc)
    has_cert = security is not None and security.tls.cert is not None
    if "CERTIFICATE_REQUIRED" in text or ("HANDSHAKE_FAILURE" in text and not has_cert):
        why = "the server requires a client certificate (mTLS): pass --tls-cert and --tls-key"
    elif "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_UNKNOWN" in text:
        why = "the server refused our client certificate: it is not signed by a CA it trusts"
    elif "CERTIFICATE_VERIFY_FAILED" in text:
        why = "the server's certificate is not trusted: pass --tls-ca with the CA that signed it"
    else:
        why = f"TLS handshake failed: {text}"
    return TlsError(why)
