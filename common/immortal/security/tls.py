"""TLS for connections to NATS: a CA to verify the server, and optionally a client
certificate for mTLS (``--tls-ca/--tls-cert/--tls-key``, or ``$IMMORTAL_TLS_CA``,
``$IMMORTAL_TLS_CERT``, ``$IMMORTAL_TLS_KEY``)."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TlsFiles", "quiet_tls_eof_warning"]


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both a TLS certificate and its key, or neither")

    @property
    def configured(self) -> bool:
        return bool(self.ca or self.cert)

    @classmethod
    def from_env(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> TlsFiles:
        env = os.environ if env is None else env
        return cls(
            ca=ca or env.get("IMMORTAL_TLS_CA") or None,
            cert=cert or env.get("IMMORTAL_TLS_CERT") or None,
            key=key or env.get("IMMORTAL_TLS_KEY") or None,
        )

    def context(self) -> ssl.SSLContext | None:
        """A client context that verifies the server against ``ca`` (else the system's
        roots) and presents our certificate if one is given; None when nothing is set."""
        if not self.configured:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None and self.key is not None:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


class _TlsEofNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def quiet_tls_eof_warning() -> None:
    """For the CLIs: drop asyncio's warning that nats-py's protocol asks to keep a TLS
    connection half-open at EOF (harmless, printed at every disconnect over TLS)."""
    logging.getLogger("asyncio").addFilter(_TlsEofNoise())
