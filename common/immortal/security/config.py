"""One auth configuration for hub, workers, clients, the auth service and the CLI.

Read from a TOML or JSON file (``$IMMORTAL_AUTH_CONFIG``) and/or environment variables
(``IMMORTAL_AUTH_ISSUER``, ``..._AUDIENCE``, ``..._JWKS_URL``, ``..._ALGORITHMS``); the
environment wins. Auth is on once an issuer is configured.

>>> config = AuthConfig(issuer="https://idp.example", audience="immortal",
...                     jwks_url="https://idp.example/.well-known/jwks.json")
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from immortal.security.errors import AuthError, RefusalReason

__all__ = ["DEFAULT_ALGORITHMS", "AuthConfig", "TokenSource"]

# Asymmetric only: a shared-secret (HS*) algorithm next to public keys is how HS/RS
# confusion happens, and an IdP's public key set has no secrets in it anyway.
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_ENV = {
    "issuer": "IMMORTAL_AUTH_ISSUER",
    "audience": "IMMORTAL_AUTH_AUDIENCE",
    "jwks_url": "IMMORTAL_AUTH_JWKS_URL",
    "algorithms": "IMMORTAL_AUTH_ALGORITHMS",
}


@dataclass(frozen=True)
class AuthConfig:
    """How tokens are verified and mapped to principals.

    ``permissions_claim`` holds entries such as ``"acme:writer"``, read with
    ``permissions_pattern`` (named groups ``tenant`` and ``role``), as Temporal's JWT claim
    mapper does; ``queues_claim`` names the queues a worker token may serve. An entry of
    ``system_tenant`` with role ``hub`` makes the hub's service identity.
    """

    issuer: str = ""
    audience: str | None = None
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None  # a static key set (JWKS JSON), instead of a URL
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = 30.0
    required_claims: tuple[str, ...] = ("exp", "iat", "sub", "iss")
    token_types: tuple[str, ...] = ()  # allowed ``typ`` headers (empty: any)
    permissions_claim: str = "permissions"
    permissions_pattern: str = r"^(?P<tenant>[a-z0-9][a-z0-9-]*):(?P<role>[a-z]+)$"
    queues_claim: str = "immortal_queues"
    groups_claim: str = "groups"
    system_tenant: str = "immortal-system"
    jwks_refresh_s: float = 30.0  # at most one refresh for unknown key ids this often
    jwks_max_age_s: float = 300.0  # a key set older than this is fetched again
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a not in ASYMMETRIC]
        if bad:
            raise ValueError(
                f"algorithms {bad} not allowed: only asymmetric algorithms are accepted "
                f"({', '.join(sorted(ASYMMETRIC))})"
            )
        if self.issuer and not (self.jwks_url or self.jwks):
            raise ValueError("auth config: give jwks_url or a static jwks for the issuer")
        re.compile(self.permissions_pattern)

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    @classmethod
    def load(
        cls, path: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> AuthConfig:
        """From ``path`` (or ``$IMMORTAL_AUTH_CONFIG``), then the environment over it."""
        env = os.environ if env is None else env
        path = path or env.get("IMMORTAL_AUTH_CONFIG") or None
        raw: dict[str, Any] = {}
        if path is not None:
            text = Path(path).read_text()
            raw = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
            raw = dict(raw.get("auth", raw))
        for name, var in _ENV.items():
            if env.get(var):
                raw[name] = env[var]
        if isinstance(raw.get("algorithms"), str):
            raw["algorithms"] = [a.strip() for a in raw["algorithms"].split(",") if a.strip()]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"auth config: unknown setting(s) {', '.join(unknown)}")
        for name in ("algorithms", "required_claims", "token_types"):
            if name in raw:
                raw[name] = tuple(raw[name])
        return cls(**raw)

    def with_keys(self, jwks: Mapping[str, Any]) -> AuthConfig:
        return replace(self, jwks=jwks, jwks_url=None)


class TokenSource:
    """Where a process's token comes from: ``--token``, ``$IMMORTAL_TOKEN``, or a command
    (``--token-command``, ``$IMMORTAL_TOKEN_COMMAND``) run again whenever a token is
    needed (each reconnect), so a short-lived token is refreshed.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        command: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._token = token or env.get("IMMORTAL_TOKEN") or None
        self._command = None if self._token else command or env.get("IMMORTAL_TOKEN_COMMAND")
        self._last: str | None = self._token

    @property
    def configured(self) -> bool:
        return bool(self._token or self._command)

    def __call__(self) -> str:
        """A token to connect with (a command is run again: a fresh token)."""
        if self._token:
            return self._token
        if self._command:
            self._last = _run_token_command(self._command)
            return self._last
        raise AuthError(
            RefusalReason.NO_TOKEN,
            "no token: pass --token, set $IMMORTAL_TOKEN or $IMMORTAL_TOKEN_COMMAND",
        )

    def current(self) -> str:
        """The token last handed out (fetched once if none was): what the process reads
        its own identity from, without running a command per call."""
        return self._last if self._last is not None else self()

    @classmethod
    def fixed(cls, token: str) -> TokenSource:
        return cls(token, env={})

    def as_callback(self) -> Callable[[], str]:
        return self.__call__


def _run_token_command(command: str) -> str:
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AuthError(RefusalReason.NO_TOKEN, f"token command failed: {exc}") from exc
    token = done.stdout.strip()
    if not token:
        raise AuthError(RefusalReason.NO_TOKEN, "token command printed no token")
    return token
