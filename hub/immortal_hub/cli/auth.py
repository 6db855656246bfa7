"""``immortal auth``: the NATS auth callout service and its key (docs/security.md).

immortal auth keygen                  # the account seed (secret) and public key
immortal auth serve -s tls://nats:4222 --config auth.toml
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from immortal_hub.cli._common import setup_logging

app = typer.Typer(help="The NATS auth callout service and its keys.", no_args_is_help=True)


@app.command()
def keygen() -> None:
    """Make the service's account key: the seed (keep it secret; the service signs with it)
    and the public key (the server config's auth_callout issuer)."""
    from immortal_hub.auth.nats_jwt import new_account_seed, public_key

    seed = new_account_seed()
    print(f"IMMORTAL_AUTH_SEED={seed}")
    print(f"IMMORTAL_AUTH_ACCOUNT={public_key(seed)}")


@app.command()
def serve(
    server: Annotated[str, typer.Option("--server", "-s", envvar="IMMORTAL_SERVER")] = (
        "nats://127.0.0.1:4222"
    ),
    config: Annotated[Path | None, typer.Option(help="auth config (TOML or JSON)")] = None,
    user: Annotated[str, typer.Option(envvar="IMMORTAL_AUTH_USER")] = "immortal-auth",
    prefix: Annotated[str, typer.Option(envvar="IMMORTAL_PREFIX")] = "imm",
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "INFO",
) -> None:
    """Answer the server's authorization requests. The seed comes from $IMMORTAL_AUTH_SEED
    and the password from $IMMORTAL_AUTH_PASSWORD (never from an argument)."""
    from immortal.security import AuthConfig, ConnectSecurity, TlsFiles
    from immortal_hub.auth.service import AuthService

    setup_logging(log_level)
    seed, password = os.environ.get("IMMORTAL_AUTH_SEED"), os.environ.get("IMMORTAL_AUTH_PASSWORD")
    settings = AuthConfig.load(config)
    if not seed or not password or not settings.enabled:
        raise typer.BadParameter(
            "set $IMMORTAL_AUTH_SEED, $IMMORTAL_AUTH_PASSWORD and the IdP "
            "($IMMORTAL_AUTH_ISSUER and $IMMORTAL_AUTH_JWKS_URL, or --config)"
        )
    tls = TlsFiles.from_env(tls_ca, tls_cert, tls_key)
    service = AuthService(
        server,
        config=settings,
        issuer_seed=seed,
        user=user,
        password=password,
        prefix=prefix,
        security=ConnectSecurity(tls=tls) if tls.configured else None,
    )
    asyncio.run(service.run())
