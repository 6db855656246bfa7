"""The issuer's key set, fetched over HTTP(S) and cached by key id.

Unlike pyjwt's ``PyJWKClient``: the last good set is kept when a fetch fails (an IdP
outage does not log everyone out), a token naming an unknown ``kid`` causes at most one
fetch per ``refresh_s`` (a flood of forged kids cannot make us hammer the IdP), unknown
kids are remembered until the next fetch, and fetching never blocks the event loop.
Rotation at the IdP (a new kid appears, the old one goes) needs no restart: the new kid
is an unknown kid, which fetches the set again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt

from immortal.security.errors import RefusalReason, TokenError

__all__ = ["JwksCache"]

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[Mapping[str, Any]]]


async def _http_fetch(url: str) -> Mapping[str, Any]:
    def get() -> Mapping[str, Any]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: Mapping[str, Any] = json.load(resp)
            return data

    return await asyncio.to_thread(get)


class JwksCache:
    """``await cache.key(kid)`` → the ``PyJWK`` to verify a token with."""

    def __init__(
        self,
        url: str | None = None,
        *,
        static: Mapping[str, Any] | None = None,
        refresh_s: float = 30.0,
        max_age_s: float = 300.0,
        fetch: Fetch | None = None,
    ) -> None:
        if (url is None) == (static is None):
            raise ValueError("give a JWKS url or a static key set")
        self.url = url
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self._fetch = fetch or _http_fetch
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = 0.0  # monotonic time of the last good fetch
        self._tried_at = -1e9  # of the last attempt, good or not
        self._missed_at = -1e9  # of the last fetch caused by an unknown kid
        self._unknown: set[str] = set()  # kids the current set does not have
        self._lock = asyncio.Lock()
        self.fetches = 0  # attempts, for tests and metrics
        if static is not None:
            self._keys = _parse(static)
            self._fetched_at = float("inf")

    @property
    def kids(self) -> list[str | None]:
        return list(self._keys)

    async def key(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        if self.url is not None and now - self._fetched_at > self.max_age_s:
            await self._refresh(min_gap=self.refresh_s if self._keys else 0.0)
        if not self._keys:
            raise TokenError(
                RefusalReason.KEYS_UNAVAILABLE,
                f"the issuer's key set could not be fetched from {self.url}",
            )
        found = self._find(kid)
        if found is not None:
            return found
        if kid is not None and kid not in self._unknown and self.url is not None:
            await self._refresh(min_gap=self.refresh_s, miss=True)
            found = self._find(kid)
            if found is not None:
                return found
            self._unknown.add(kid)
        if kid is None:
            raise TokenError(
                RefusalReason.MALFORMED,
                f"token names no key id (kid) and the issuer has {len(self._keys)} keys",
            )
        raise TokenError(RefusalReason.UNKNOWN_KID, f"unknown key id {kid!r}")

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, *, min_gap: float, miss: bool = False) -> None:
        async with self._lock:  # concurrent misses share one fetch
            last = self._missed_at if miss else self._tried_at
            if time.monotonic() - last < min_gap:
                return
            self._tried_at = time.monotonic()
            if miss:
                self._missed_at = self._tried_at
            self.fetches += 1
            assert self.url is not None
            try:
                keys = _parse(await self._fetch(self.url))
            except Exception as exc:
                if self._keys:
                    log.warning(
                        "JWKS fetch from %s failed (%s); keeping the last good set", self.url, exc
                    )
                else:
                    log.warning("JWKS fetch from %s failed: %s", self.url, exc)
                return
            if not keys:
                log.warning("JWKS at %s has no usable keys; keeping the last good set", self.url)
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            self._unknown.clear()


def _parse(jwks: Mapping[str, Any]) -> dict[str | None, jwt.PyJWK]:
    keys: dict[str | None, jwt.PyJWK] = {}
    for raw in jwks.get("keys", []):
        if not isinstance(raw, Mapping) or raw.get("use", "sig") != "sig":
            continue
        try:
            keys[raw.get("kid")] = jwt.PyJWK(dict(raw))
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as exc:
            log.debug("skipping JWKS key %s: %s", raw.get("kid"), exc)
    return keys
