"""``immortal codec``: key rings for encrypted payloads, and the codec endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from immortal_hub.cli._common import setup_logging, until_signalled

__all__ = ["app"]

app = typer.Typer(add_completion=False, help="Encrypted payloads: key rings, the codec server.")


@app.command("keygen")
def keygen(key_id: Annotated[str, typer.Argument(help="the new key's id, e.g. k1")]) -> None:
    """Print a key ring holding one new random AES-256 key (keep it secret: a file only its
    clients and workers can read). To rotate, add a key to the ring and make it current."""
    from immortal.codec import KeyRing, new_key

    key = new_key()
    KeyRing.parse(f"{key_id}={key}")  # refuses a bad key id
    print(json.dumps({"current": key_id, "keys": {key_id: key}}, indent=2))


@app.command("serve")
def serve(
    ring: Annotated[
        list[str],
        typer.Option("--ring", help="TENANT=FILE: the key ring of a tenant; repeatable"),
    ],
    config: Annotated[
        Path | None, typer.Option(help="auth config (TOML or JSON; or $IMMORTAL_AUTH_CONFIG)")
    ] = None,
    host: str = "127.0.0.1",
    port: int = 8233,
    allow_origin: Annotated[
        str | None, typer.Option(help="the web UI's origin, for browsers (CORS)")
    ] = None,
    log_level: str = "INFO",
) -> None:
    """Serve POST /decode: sealed payloads opened for a bearer of a verified token that may
    read its tenant. The key rings stay in this process; auth must be configured."""
    import asyncio

    from immortal.codec import AesGcmCodec, KeyRing
    from immortal.codec._server import CodecServer
    from immortal.security import AuthConfig, TokenVerifier

    setup_logging(log_level)
    settings = AuthConfig.load(config)
    if not settings.enabled:
        raise typer.BadParameter(
            "the codec server decodes only for verified tokens: configure auth (an issuer and "
            "its keys, --config or $IMMORTAL_AUTH_ISSUER ...)"
        )
    codecs = {}
    for entry in ring:
        tenant, sep, path = entry.partition("=")
        if not sep or not tenant or not path:
            raise typer.BadParameter(f"{entry!r} is not TENANT=FILE", param_hint="--ring")
        codecs[tenant] = AesGcmCodec(KeyRing.from_file(path))
    server = CodecServer(
        codecs, TokenVerifier(settings), host=host, port=port, allow_origin=allow_origin
    )
    try:
        server.start()
    except OSError as exc:  # the port taken, an address not here
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    print(f"codec server on {server.url}/decode", flush=True)
    try:
        asyncio.run(until_signalled())
    finally:
        server.stop()
