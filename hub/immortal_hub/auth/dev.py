"""``immortal dev --secure``: the whole of auth on one machine, in one command. A local
issuer (its key set served on 127.0.0.1), a CA with server and client certificates,
nats-server with the auth callout and mTLS, the auth service, a hub and a worker with their
own tokens; then one example run as a writer, and the tokens and commands for a reader
and a writer to try."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path

from immortal import Client
from immortal.security import ConnectSecurity, TlsFiles
from immortal.testing import NatsServer
from immortal_hub._hub import Hub
from immortal_hub.auth.local import LocalIssuer, make_dev_certificates
from immortal_hub.auth.nats_jwt import new_account_seed, public_key
from immortal_hub.auth.server_config import ServerTls, callout_config
from immortal_hub.auth.service import AuthService

__all__ = ["run_secure_dev"]

TENANT = "dev"
SERVICE_USER = "immortal-auth"


async def run_secure_dev(port: int, store: Path, example: bool = True) -> None:
    issuer = LocalIssuer()
    certs = make_dev_certificates(store / "certs")
    seed, password = new_account_seed(), secrets.token_urlsafe(18)
    server = NatsServer(
        store_dir=store,
        port=port,
        extra_config=callout_config(
            public_key(seed),
            service_user=SERVICE_USER,
            service_password=password,
            tls=ServerTls(str(certs.server_cert), str(certs.server_key), str(certs.ca)),
        ),
    )
    await server.start()
    url = f"tls://127.0.0.1:{server.port}"
    tls = certs.client
    service = AuthService(
        url,
        config=issuer.config(),
        issuer_seed=seed,
        user=SERVICE_USER,
        password=password,
        security=ConnectSecurity(tls=tls),
    )
    await service.start()
    hub = Hub(
        url,
        security=ConnectSecurity.with_token(issuer.token("dev-hub", ["immortal-system:hub"]), tls),
    )
    await hub.start()
    tokens = _write_tokens(store / "tokens", issuer)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_worker", "immortal.examples.orders",
        "--server", url, "--log-level", "WARNING",
        env={**os.environ, **_tls_env(tls), "IMMORTAL_TOKEN": tokens["worker"].read_text()},
        start_new_session=True,
    )  # fmt: skip
    print(f"issuer       {issuer.url}  (tokens in {tokens['writer'].parent}/)")
    print(f"nats-server  {url}  (auth callout, mTLS; certificates in {certs.ca.parent}/)")
    print(f"auth service {service.issuer[:12]}...   hub {hub.hub_id}   worker pid {worker.pid}")
    try:
        if example:
            await _example(url, tokens["writer"].read_text(), tls)
        _print_try(url, tls, tokens)
        await _until_signalled()
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await worker.wait()
        await hub.stop()
        await service.stop()
        await server.stop()
        issuer.close()


def _write_tokens(directory: Path, issuer: LocalIssuer) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = {
        "writer": issuer.token("dev-writer", [f"{TENANT}:writer"]),
        "reader": issuer.token("dev-reader", [f"{TENANT}:reader"]),
        "admin": issuer.token("dev-admin", [f"{TENANT}:admin"]),  # e.g. immortal policy apply
        "worker": issuer.token("dev-worker", [f"{TENANT}:worker"], queues=["default"]),
    }
    paths = {}
    for role, token in made.items():
        path = directory / f"{role}.jwt"
        path.write_text(token)
        path.chmod(0o600)
        paths[role] = path
    return paths


def _tls_env(tls: TlsFiles) -> dict[str, str]:
    return {
        "IMMORTAL_TLS_CA": tls.ca or "",
        "IMMORTAL_TLS_CERT": tls.cert or "",
        "IMMORTAL_TLS_KEY": tls.key or "",
    }


async def _example(url: str, writer: str, tls: TlsFiles) -> None:
    from immortal.examples.orders import Order, place_order

    async with Client(url, security=ConnectSecurity.with_token(writer, tls)) as client:
        async with asyncio.timeout(30):
            while not await client.workers("default"):  # noqa: ASYNC110 (a KV poll)
                await asyncio.sleep(0.1)
        handle = await client.start(
            place_order, Order(id="first-order", items=["book"], cents=4200)
        )
        result = await handle.result(timeout=60)
        by = (await handle.history())[0].attrs.get("by", {})
        outcome = result.model_dump_json()
        print(f"example run  {handle.workflow_id} -> {outcome}  (started by {by.get('subject')})")


def _print_try(url: str, tls: TlsFiles, tokens: dict[str, Path]) -> None:
    env = " ".join(f"{k}={v}" for k, v in _tls_env(tls).items())
    writer = f'IMMORTAL_TOKEN="$(cat {tokens["writer"]})"'
    reader = f'IMMORTAL_TOKEN="$(cat {tokens["reader"]})"'
    order = '\'{"id": "o2", "items": ["pen"], "cents": 150}\''
    print(
        "\nImmortal is running with auth on (tenant 'dev'). In another shell try:\n"
        f"  export {env}\n"
        f"  {writer} uv run immortal workflow start place_order {order} --id o2 --wait -s {url}\n"
        f"  {reader} uv run immortal workflow history o2 -s {url}\n"
        f"  {reader} uv run immortal workflow start place_order {order} -s {url}"
        "   # refused: a reader may not start\n"
        f"  uv run immortal workflow describe o2 -s {url}   # refused: no token\n"
        "Ctrl-C stops everything.",
        flush=True,
    )


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
