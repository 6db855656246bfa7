"""mTLS with the auth service: certificates made by the test (trustme), a server that
verifies client certificates, and every part (auth service, hub, worker, client) on TLS.
No certificate, or one from another CA, is a TlsError naming the problem."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from immortal import Client
from immortal._connect import connect
from immortal.security import TlsError, TlsFiles
from immortal_hub import Hub
from immortal_hub.auth import ServerTls
from immortal_worker import Worker
from tests.security_fixtures import SecureStack, secure_stack
from tests.workflows import add, double, square, three_step


@dataclass
class Certs:
    ca: str
    server: ServerTls
    client: TlsFiles  # signed by the server's CA
    stranger: TlsFiles  # signed by another CA
    no_cert: TlsFiles  # trusts the server, presents nothing


def make_certs(d: Path) -> Certs:
    ca, other = trustme.CA(), trustme.CA()

    def write(cert: trustme.LeafCert, stem: str) -> tuple[str, str]:
        cert.cert_chain_pems[0].write_to_path(d / f"{stem}.pem")
        cert.private_key_pem.write_to_path(d / f"{stem}.key")
        return str(d / f"{stem}.pem"), str(d / f"{stem}.key")

    ca.cert_pem.write_to_path(d / "ca.pem")
    server_cert, server_key = write(ca.issue_cert("127.0.0.1", "localhost"), "server")
    client_cert, client_key = write(ca.issue_cert("svc@acme.example"), "client")
    bad_cert, bad_key = write(other.issue_cert("svc@acme.example"), "stranger")
    cafile = str(d / "ca.pem")
    return Certs(
        ca=cafile,
        server=ServerTls(server_cert, server_key, cafile),
        client=TlsFiles(cafile, client_cert, client_key),
        stranger=TlsFiles(cafile, bad_cert, bad_key),
        no_cert=TlsFiles(cafile),
    )


@pytest.fixture
async def tls_stack(tmp_path: Path) -> AsyncIterator[tuple[SecureStack, Certs]]:
    certs = make_certs(tmp_path)
    async with secure_stack(tmp_path, server_tls=certs.server, client_tls=certs.client) as s:
        yield s, certs


async def test_every_part_runs_over_mtls(tls_stack: tuple[SecureStack, Certs]) -> None:
    stack, _ = tls_stack
    assert stack.url.startswith("tls://")
    hub = Hub(stack.url, security=stack.hub_security())
    await hub.start()
    worker = Worker(
        stack.url,
        workflows=[three_step],
        activities=[double, square, add],
        security=stack.security("svc", ["acme:worker"], queues=["default"]),
    )
    await worker.start()
    try:
        async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
            handle = await ann.start(three_step, 4)
            assert await asyncio.wait_for(handle.result(), 30) == 24
    finally:
        await worker.stop()
        await hub.stop()


async def test_no_client_certificate_or_one_from_another_ca_is_refused(
    tls_stack: tuple[SecureStack, Certs],
) -> None:
    stack, certs = tls_stack
    with pytest.raises(TlsError, match="requires a client certificate"):
        await connect(
            stack.url, name="x", security=stack.security("ann", ["acme:reader"], tls=certs.no_cert)
        )
    with pytest.raises(TlsError, match="not signed by a CA it trusts"):
        await connect(
            stack.url, name="x", security=stack.security("ann", ["acme:reader"], tls=certs.stranger)
        )
    untrusting = TlsFiles(None, certs.client.cert, certs.client.key)  # system roots only
    with pytest.raises(TlsError, match="server's certificate is not trusted"):
        await connect(
            stack.url, name="x", security=stack.security("ann", ["acme:reader"], tls=untrusting)
        )
    # The server still serves everyone else.
    nc = await connect(stack.url, name="ok", security=stack.security("ann", ["acme:reader"]))
    assert nc.is_connected
    await nc.close()
