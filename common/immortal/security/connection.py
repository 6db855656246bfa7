"""What a process presents when it connects: a token (checked by the auth service at
CONNECT), TLS, and the inbox prefix and sender id that follow from the token."""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from immortal.security.claims import unverified_pid, unverified_principal
from immortal.security.config import AuthConfig, TokenSource
from immortal.security.errors import AuthError, RefusalReason
from immortal.security.identity import ANONYMOUS_PID, Principal
from immortal.security.permissions import inbox_prefix
from immortal.security.signing import Signer
from immortal.security.tls import TlsFiles

__all__ = [
    "ConnectSecurity",
    "direct_known",
    "direct_withheld",
    "forget_direct",
    "is_secure",
    "read_relay",
    "relays_reads",
    "remember_sender",
    "sender_of",
    "withhold_direct",
]

_senders: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_relayed: weakref.WeakSet[Any] = weakref.WeakSet()  # connections whose reads go via hubs
# connection -> stream -> whether the broker lets it direct-get the stream (False: the
# tenant's policy left it to the relay, ``permissions.DECIDED_READS``); forgotten at a
# reconnect, which may bring other grants
_direct: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()
# token -> (config, principal): a token's claims read once (bounded by tokens in use)
_principals: dict[str, tuple[AuthConfig | None, Principal]] = {}


@dataclass(frozen=True)
class ConnectSecurity:
    """A token source and TLS files; ``ConnectSecurity.from_env()`` reads the usual
    options and environment variables.

    >>> Client(url, security=ConnectSecurity(token=TokenSource.fixed(jwt)))
    """

    token: TokenSource | None = None
    tls: TlsFiles = field(default_factory=TlsFiles)
    signer: Signer | None = None  # signs every input sent (``signing``)

    @classmethod
    def from_env(
        cls,
        *,
        token: str | None = None,
        token_command: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ConnectSecurity:
        source = TokenSource(token, command=token_command, env=env)
        return cls(
            token=source if source.configured else None,
            tls=TlsFiles.from_env(tls_ca, tls_cert, tls_key, env=env),
            signer=Signer.from_env(env),
        )

    @classmethod
    def with_token(
        cls, token: str, tls: TlsFiles | None = None, signer: Signer | None = None
    ) -> ConnectSecurity:
        return cls(token=TokenSource.fixed(token), tls=tls or TlsFiles(), signer=signer)

    def sender(self) -> str:
        """The principal id this connection's inputs carry (``anon`` without a token)."""
        return unverified_pid(self.token.current()) if self.token is not None else ANONYMOUS_PID

    def principal(self, config: AuthConfig | None = None) -> Principal | None:
        """Who the token claims to be (unverified; the auth service verifies), or None.
        Read once per token, not per call (a client asks on every start)."""
        if self.token is None:
            return None
        token = self.token.current()
        cached = _principals.get(token)
        if cached is None or cached[0] is not config:
            if len(_principals) > 64:  # refreshed tokens of a long-lived process
                _principals.clear()
            cached = _principals[token] = (config, unverified_principal(token, config))
        return cached[1]

    def tenant_for(self, asked: str | None, config: AuthConfig | None = None) -> str:
        """The tenant to act for: the token's. A tenant asked for by hand must be the same
        (the broker would refuse everything else anyway); without a token, ``asked``."""
        principal = self.principal(config)
        if principal is None:
            return asked or "default"
        if asked is not None and asked != principal.tenant:
            raise AuthError(
                RefusalReason.PERMISSION,
                f"the token is for tenant {principal.tenant!r}, not {asked!r}",
            )
        return principal.tenant

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {}
        if self.token is not None:
            options["token"] = self.token.as_callback()  # asked again at each reconnect
            options["inbox_prefix"] = inbox_prefix(self.sender())
        ctx: ssl.SSLContext | None = self.tls.context()
        if ctx is not None:
            options["tls"] = ctx
        return options


def remember_sender(nc: Any, sender: str, *, relay_reads: bool = False) -> None:
    _senders[nc] = sender
    if relay_reads:
        _relayed.add(nc)


def sender_of(nc: Any) -> str:
    """The sender id of a connection made by ``immortal._connect`` (``anon`` otherwise)."""
    return _senders.get(nc, ANONYMOUS_PID)


def is_secure(nc: Any) -> bool:
    """Whether the connection authenticated with a token (its reads go through the hubs'
    read relay, see ``permissions``)."""
    return _senders.get(nc, ANONYMOUS_PID) != ANONYMOUS_PID


def relays_reads(nc: Any) -> bool:
    """Whether batched reads on this connection go through the hubs' read relay: a
    tenant's connection may not use the direct get whose filter is in the body."""
    return nc in _relayed


def read_relay(nc: Any, subject: str) -> str | None:
    """The relay subject for a batched read of ``subject`` (``<p>.hist.<t>...`` or
    ``$KV.<p>-<bucket>.<t>...``), or None when this connection reads directly."""
    if nc not in _relayed:
        return None
    parts = subject.split(".")
    if len(parts) < 3:
        return None
    prefix = parts[1].split("-", 1)[0] if parts[0] == "$KV" else parts[0]
    return f"{prefix}.read.{parts[2]}.{sender_of(nc)}"


def direct_withheld(nc: Any, stream: str) -> bool:
    """Whether the broker refused this connection a direct get on ``stream`` before."""
    return _direct.get(nc, {}).get(stream) is False


def direct_known(nc: Any, stream: str) -> bool | None:
    """Whether the broker lets this connection direct-get ``stream`` (None: not known)."""
    return _direct.get(nc, {}).get(stream)


def withhold_direct(nc: Any, stream: str, withheld: bool = True) -> None:
    """Remember whether the broker refuses this connection direct gets on ``stream``."""
    _direct.setdefault(nc, {})[stream] = not withheld


def forget_direct(nc: Any) -> None:
    """A reconnect may bring other grants: find out again."""
    _direct.pop(nc, None)
