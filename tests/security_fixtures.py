"""A local identity provider for the security tests: keys made by ``cryptography``, a key
set served over HTTP on 127.0.0.1 (stdlib ``http.server``), tokens signed by pyjwt; and
certificates made by ``trustme``. Nothing here is committed key material."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from immortal.security import AuthConfig, ConnectSecurity, TlsFiles
from immortal.testing import NatsServer
from immortal_hub.auth import AuthService, ServerTls, callout_config, new_account_seed, public_key

AUDIENCE = "immortal"


class Issuer:
    """An OIDC-like issuer on 127.0.0.1: ``/.well-known/jwks.json`` serves the current keys.

    >>> with Issuer.serving() as idp:
    ...     token = idp.token("ann", ["acme:writer"])
    """

    def __init__(self) -> None:
        self._keys: dict[str, Any] = {}  # kid -> private key
        self.newest = self.add_key()
        self.requests = 0  # JWKS fetches served
        self.down = False  # answer 503 (an IdP outage)
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests += 1
                if issuer.down or self.path != "/.well-known/jwks.json":
                    self.send_response(503 if issuer.down else 404)
                    self.end_headers()
                    return
                body = json.dumps(issuer.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @classmethod
    @contextmanager
    def serving(cls) -> Iterator[Issuer]:
        issuer = cls()
        issuer._thread.start()
        try:
            yield issuer
        finally:
            issuer._http.shutdown()
            issuer._http.server_close()

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    def add_key(self, kind: str = "rsa") -> str:
        kid = f"k-{uuid.uuid4().hex[:8]}"
        if kind == "rsa":
            self._keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self._keys[kid] = ec.generate_private_key(ec.SECP256R1())
        self.newest = kid
        return kid

    def rotate(self) -> tuple[str, str]:
        """A new key appears and the old ones disappear: (old kid, new kid)."""
        old = self.newest
        new = self.add_key()
        for kid in list(self._keys):
            if kid != new:
                del self._keys[kid]
        return old, new

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self._keys.items():
            algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
            jwk = json.loads(algo.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def public_pem(self, kid: str | None = None) -> bytes:
        key = self._keys[kid or self.newest]
        return bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def config(self, **overrides: Any) -> AuthConfig:
        settings: dict[str, Any] = {
            "issuer": self.url,
            "audience": AUDIENCE,
            "jwks_url": self.jwks_url,
            "leeway": 5.0,
            "jwks_refresh_s": 30.0,
        }
        return AuthConfig(**{**settings, **overrides})

    def claims(self, subject: str, permissions: list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 3600,
            "jti": uuid.uuid4().hex,
            "permissions": permissions,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        subject: str,
        permissions: list[str],
        *,
        kid: str | None = None,
        key: Any = None,
        queues: list[str] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed by ``kid`` (default: the newest key), or by ``key`` under that
        kid (a forgery), with ``claims`` over the usual ones (None removes one)."""
        kid = kid or self.newest
        signer = key or self._keys.get(kid) or self._keys[self.newest]
        if queues is not None:
            claims["immortal_queues"] = queues
        alg = "RS256" if isinstance(signer, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(
            self.claims(subject, permissions, **claims), signer, algorithm=alg, headers={"kid": kid}
        )


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def part(obj: Any) -> str:
        return b64(json.dumps(obj).encode())

    return f"{part(header)}.{part(claims)}.{b64(signature)}"


def hs256_with(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """The HS/RS confusion attack: HMAC-signed with the issuer's *public* key as secret."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- a secure deployment: nats-server with the auth callout, the auth service ----------

SERVICE_USER = "immortal-auth"


@dataclass
class SecureStack:
    """A real nats-server whose every connection goes through our auth service."""

    idp: Issuer
    server: NatsServer
    service: AuthService
    seed: str
    password: str
    tls: TlsFiles = field(default_factory=TlsFiles)

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls.configured else "nats"
        return f"{scheme}://127.0.0.1:{self.server.port}"

    def security(
        self, subject: str, permissions: list[str], *, tls: TlsFiles | None = None, **claims: Any
    ) -> ConnectSecurity:
        return ConnectSecurity.with_token(
            self.idp.token(subject, permissions, **claims), tls or self.tls
        )

    def hub_security(self) -> ConnectSecurity:
        return self.security("hub-1", ["immortal-system:hub"])

    def admin_nc_options(self) -> dict[str, Any]:
        """The service user's login: full rights, for tests that look at what was stored."""
        return {"user": SERVICE_USER, "password": self.password}


@asynccontextmanager
async def secure_stack(
    tmp_path: Path,
    *,
    server_tls: ServerTls | None = None,
    client_tls: TlsFiles | None = None,
    config: dict[str, Any] | None = None,
) -> AsyncIterator[SecureStack]:
    with Issuer.serving() as idp:
        seed = new_account_seed()
        password = uuid.uuid4().hex
        server = NatsServer(
            store_dir=tmp_path / "nats",
            extra_config=callout_config(
                public_key(seed),
                service_user=SERVICE_USER,
                service_password=password,
                tls=server_tls,
            ),
        )
        await server.start()
        tls = client_tls or TlsFiles()
        scheme = "tls" if tls.configured else "nats"
        service = AuthService(
            f"{scheme}://127.0.0.1:{server.port}",
            config=idp.config(**(config or {})),
            issuer_seed=seed,
            user=SERVICE_USER,
            password=password,
            security=ConnectSecurity(tls=tls) if tls.configured else None,
        )
        await service.start()
        try:
            yield SecureStack(idp, server, service, seed, password, tls)
        finally:
            await service.stop()
            await server.close()


@asynccontextmanager
async def hub_and_worker(
    stack: SecureStack,
    *,
    workflows: list[Any],
    activities: list[Any],
    engine: str = "builtin",
    **worker_options: Any,
) -> AsyncIterator[Any]:
    """A hub (deciding with ``engine``) and a worker of tenant acme's queue ``default``,
    each with its own token, stopped on the way out; yields the hub."""
    from immortal_hub import Hub
    from immortal_worker import Worker

    hub = Hub(stack.url, security=stack.hub_security(), policy_engine=engine)
    await hub.start()
    worker = Worker(
        stack.url,
        workflows=workflows,
        activities=activities,
        security=stack.security("svc-worker", ["acme:worker"], queues=["default"]),
        **worker_options,
    )
    await worker.start()
    try:
        yield hub
    finally:
        await worker.stop()
        await hub.stop()
