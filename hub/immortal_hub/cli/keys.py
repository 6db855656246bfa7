"""``immortal keys``: a tenant's signing keys (the public keys its hubs accept inputs
signed by), for its admins.

immortal keys new k2 --out k2.json --not-before 2026-12-02T10:00:00Z   # prints the public key
immortal keys add k2 --public-key <b64url> --not-before 2026-12-02T10:00:00Z
immortal keys list
immortal keys retire k1                    # now (or --at ...): its signatures are refused
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeout,
    Prefix,
    Server,
    Tenant,
    with_client,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from immortal import Client
    from immortal.security.keys import KeyRegistry

__all__ = ["app"]

app = typer.Typer(add_completion=False, help="Signing keys: new, add, list, retire (admin).")

When = Annotated[
    str | None, typer.Option(help="ISO 8601 time (UTC if no zone) or seconds since the epoch")
]


@app.command("new")
def keys_new(
    key_id: Annotated[str, typer.Argument(help="the new key's id")],
    out: Annotated[Path, typer.Option(help="where to write the private key (mode 600)")],
    not_before: Annotated[
        str | None,
        typer.Option(help="signers move to this key from then on (ISO 8601 or epoch seconds)"),
    ] = None,
) -> None:
    """Make a key pair: the private key goes to a file for a signer
    (``$IMMORTAL_SIGNING_KEY_FILE``; during a rollout ``old.json,new.json``), the public
    key is printed for ``keys add``."""
    from immortal.security.signing import SigningKey

    try:
        key = SigningKey.generate(key_id, not_before=_when(not_before) if not_before else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        out.touch(mode=0o600, exist_ok=False)  # atomically ours, unreadable to others
    except FileExistsError:
        raise typer.BadParameter(f"{out} exists: not overwriting a key") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot write {out}: {exc.strerror}") from None
    out.write_text(json.dumps(key.to_json()) + "\n")
    print(key.public_key)


@app.command("add")
def keys_add(
    key_id: Annotated[str, typer.Argument(help="the key's id, as its signer names it")],
    public_key: Annotated[str, typer.Option(help="Ed25519 public key, base64url")],
    not_before: When = None,
    not_after: When = None,
    subject: Annotated[str, typer.Option(help="only this principal may sign with it")] = "",
    role: Annotated[str, typer.Option(help="only a principal with this role may")] = "",
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Register a public key; hubs accept its signatures from ``--not-before`` on (give
    them a few seconds, and signers move to the newest key by themselves)."""
    from immortal.security.keys import RegisteredKey

    try:
        key = RegisteredKey(
            key_id=key_id,
            public_key=public_key,
            not_before=_when(not_before) if not_before else time.time(),
            not_after=_when(not_after) if not_after else None,
            subject=subject,
            role=role,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def add(client: Client) -> None:
        await _change(client, lambda registry: registry.added(key))
        print(f"added key {key_id} for tenant {client.tenant}")

    with_client(server, tenant, prefix, connect_timeout, add)


@app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """The tenant's keys, with their validity and status now."""
    from dataclasses import asdict

    from immortal.security.keys import read_registry

    async def show(client: Client) -> None:
        registry, _ = await read_registry(client.nc, client.names, client.tenant)
        now = time.time()
        if not registry.keys and not as_json:
            print(f"none: no signing keys for tenant {client.tenant!r}")
        for k in registry.keys:
            if as_json:
                print(json.dumps({**asdict(k), "status": k.status(now)}))
                continue
            until = _iso(k.not_after) if k.not_after is not None else "-"
            owner = " ".join(f"{n}={v}" for n, v in (("subject", k.subject), ("role", k.role)) if v)
            print(f"{k.key_id:<16} {k.status(now):<14} {_iso(k.not_before)} .. {until} {owner}")

    with_client(server, tenant, prefix, connect_timeout, show)


@app.command("retire")
def keys_retire(
    key_id: Annotated[str, typer.Argument()],
    at: When = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """End a key's validity (now, or ``--at``): hubs refuse its signatures from then on,
    naming the key id. It stays listed."""
    when = _when(at) if at else time.time()

    async def retire(client: Client) -> None:
        await _change(client, lambda registry: registry.retired(key_id, when))
        print(f"retired key {key_id} of tenant {client.tenant} from {_iso(when)}")

    with_client(server, tenant, prefix, connect_timeout, retire)


async def _change(client: Client, change: Callable[[KeyRegistry], KeyRegistry]) -> None:
    """Read, change, write back unless someone else wrote meanwhile (then again)."""
    from immortal import ImmortalError
    from immortal.security.keys import read_registry, write_registry

    for _ in range(5):
        registry, revision = await read_registry(client.nc, client.names, client.tenant)
        try:
            changed = change(registry)
        except ValueError as exc:
            raise ImmortalError(str(exc)) from None
        if await write_registry(client.nc, client.names, client.tenant, changed, revision):
            return
    raise ImmortalError("the key registry kept changing meanwhile: try again")


def _when(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither ISO 8601 nor seconds") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
