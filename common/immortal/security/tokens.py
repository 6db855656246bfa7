"""Verifying a bearer token (RFC 8725): the algorithm from our allowlist, never from the
token alone; the key's type must fit that algorithm; ``iss``, ``aud``, ``exp``/``nbf`` with
a small leeway and the required claims checked; each refusal a :class:`TokenError` that
names its reason. A verified token is cached until it expires, so a reconnect (or a
second connection with the same token) costs a dictionary lookup, not a signature check.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import jwt

from immortal.security.claims import map_claims
from immortal.security.config import AuthConfig
from immortal.security.errors import RefusalReason, TokenError
from immortal.security.identity import Principal
from immortal.security.jwks import JwksCache

__all__ = ["TokenVerifier"]

# Which key type each algorithm family needs: an RSA public key can never be used as an
# HMAC secret, nor an EC key for RSA.
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_ERRORS: list[tuple[type[Exception], RefusalReason]] = [
    (jwt.ExpiredSignatureError, RefusalReason.EXPIRED),
    (jwt.ImmatureSignatureError, RefusalReason.NOT_YET_VALID),
    (jwt.InvalidIssuerError, RefusalReason.WRONG_ISSUER),
    (jwt.InvalidAudienceError, RefusalReason.WRONG_AUDIENCE),
    (jwt.MissingRequiredClaimError, RefusalReason.MISSING_CLAIM),
    (jwt.InvalidSignatureError, RefusalReason.BAD_SIGNATURE),
]


class TokenVerifier:
    """``principal = await verifier.verify(token)``; raises :class:`TokenError`."""

    def __init__(
        self, config: AuthConfig, keys: JwksCache | None = None, *, cache_size: int = 10_000
    ) -> None:
        if not config.enabled:
            raise ValueError("auth config has no issuer: auth is off")
        self.config = config
        self.keys = keys or JwksCache(
            config.jwks_url,
            static=None if config.jwks_url else config.jwks,
            refresh_s=config.jwks_refresh_s,
            max_age_s=config.jwks_max_age_s,
        )
        self._cache: OrderedDict[bytes, Principal] = OrderedDict()
        self._cache_size = cache_size
        self.verified = 0  # signature checks done, for tests and metrics

    async def verify(self, token: str | None) -> Principal:
        if not token:
            raise TokenError(RefusalReason.NO_TOKEN, "no token given")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at is None or time.time() <= cached.expires_at + self.config.leeway:
                self._cache.move_to_end(digest)
                return cached
            del self._cache[digest]  # expired: verifying again says so
        principal = await self._verify(token)
        self._cache[digest] = principal
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> Principal:
        config = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenError(RefusalReason.MALFORMED, f"token is not a JWT: {exc}") from exc
        alg = header.get("alg")
        if alg not in config.algorithms:
            raise TokenError(
                RefusalReason.ALG_NOT_ALLOWED,
                f"algorithm {alg!r} is not allowed (allowed: {', '.join(config.algorithms)})",
            )
        if config.token_types and header.get("typ") not in config.token_types:
            raise TokenError(
                RefusalReason.MALFORMED, f"token type {header.get('typ')!r} is not accepted"
            )
        key = await self.keys.key(header.get("kid"))
        _check_key_fits(key, str(alg))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[str(alg)],
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={
                    "require": list(config.required_claims),
                    "verify_aud": config.audience is not None,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise _refusal(exc) from exc
        self.verified += 1
        return map_claims(config, claims)


def _check_key_fits(key: jwt.PyJWK, alg: str) -> None:
    kty = key.key_type
    want = _KTY.get(alg[:2])
    declared = getattr(key, "algorithm_name", None)
    if want != kty or (key._jwk_data.get("alg") and declared != alg):
        raise TokenError(
            RefusalReason.ALG_NOT_ALLOWED,
            f"algorithm {alg} does not fit key {key.key_id!r} ({kty}"
            f"{', ' + str(key._jwk_data.get('alg')) if key._jwk_data.get('alg') else ''})",
        )


def _refusal(exc: jwt.InvalidTokenError) -> TokenError:
    for kind, reason in _ERRORS:
        if isinstance(exc, kind):
            return TokenError(reason, f"token refused ({reason}): {exc}")
    return TokenError(RefusalReason.MALFORMED, f"token refused: {exc}")
