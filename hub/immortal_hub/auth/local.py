"""A local identity provider and certificate authority, for ``immortal dev --secure`` and
for trying auth on one machine: an RSA key whose key set is served over HTTP on
127.0.0.1, tokens signed with it (pyjwt), and a CA with server and client certificates
(``cryptography``). Everything is made at start and kept in the dev directory; none of
it is meant for production."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import RSAAlgorithm

from immortal.security import AuthConfig, TlsFiles

__all__ = ["DevCertificates", "LocalIssuer", "make_dev_certificates"]

AUDIENCE = "immortal"


class LocalIssuer:
    """Tokens and their key set at ``http://127.0.0.1:<port>/.well-known/jwks.json``."""

    def __init__(self) -> None:
        self.kid = f"dev-{uuid.uuid4().hex[:8]}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/.well-known/jwks.json"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if ok:
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def config(self) -> AuthConfig:
        return AuthConfig(
            issuer=self.url, audience=AUDIENCE, jwks_url=f"{self.url}/.well-known/jwks.json"
        )

    def token(
        self,
        subject: str,
        permissions: list[str],
        *,
        queues: list[str] | None = None,
        ttl: float = 12 * 3600,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + int(ttl),
            "jti": uuid.uuid4().hex,
            "permissions": permissions,
        }
        if queues is not None:
            claims["immortal_queues"] = queues
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})


@dataclass(frozen=True)
class DevCertificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client: TlsFiles


def make_dev_certificates(directory: Path) -> DevCertificates:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "immortal dev CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, key

    def write(stem: str, cert: Any, key: Any) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server_cert, server_key = write(
        "server", *leaf("server", server_sans, ExtendedKeyUsageOID.SERVER_AUTH)
    )
    client_sans: list[x509.GeneralName] = [x509.DNSName("immortal-dev-client")]
    client_cert, client_key = write(
        "client", *leaf("client", client_sans, ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    return DevCertificates(
        ca=ca_path,
        server_cert=server_cert,
        server_key=server_key,
        client=TlsFiles(str(ca_path), str(client_cert), str(client_key)),
    )
