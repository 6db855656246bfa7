"""What a process presents when it connects: a token (checked by the auth service at
CONNECT), TLS, and the inbox prefix and sender id that follow from the token."""

from __future__ import annotations

import ssl
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from immortal.security.claims import unverified_pid
from immortal.security.config import TokenSource
from immortal.security.identity import ANONYMOUS_PID
from immortal.security.permissions import inbox_prefix
from immortal.security.tls import TlsFiles

__all__ = ["ConnectSecurity", "is_secure", "remember_sender", "sender_of"]

_senders: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ConnectSecurity:
    """A token source and TLS files; ``ConnectSecurity.from_env()`` reads the usual
    options and environment variables.

    >>> Client(url, security=ConnectSecurity(token=TokenSource.fixed(jwt)))
    """

    token: TokenSource | None = None
    tls: TlsFiles = field(default_factory=TlsFiles)

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
        )

    @classmethod
    def with_token(cls, token: str, tls: TlsFiles | None = None) -> ConnectSecurity:
        return cls(token=TokenSource.fixed(token), tls=tls or TlsFiles())

    def sender(self) -> str:
        """The principal id this connection's inputs carry (``anon`` without a token)."""
        return unverified_pid(self.token()) if self.token is not None else ANONYMOUS_PID

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


def remember_sender(nc: Any, sender: str) -> None:
    _senders[nc] = sender


def sender_of(nc: Any) -> str:
    """The sender id of a connection made by ``immortal._connect`` (``anon`` otherwise)."""
    return _senders.get(nc, ANONYMOUS_PID)


def is_secure(nc: Any) -> bool:
    """Whether the connection authenticated with a token (its reads go through the hubs'
    read relay, see ``permissions``)."""
    return _senders.get(nc, ANONYMOUS_PID) != ANONYMOUS_PID
