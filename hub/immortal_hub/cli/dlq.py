"""``immortal dlq``: inputs hubs could not apply, listed and re-driven."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeout,
    Prefix,
    Server,
    Tenant,
    readable,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client

__all__ = ["app"]

app = typer.Typer(add_completion=False, help="Inputs hubs could not apply: list, re-drive.")


@app.command("list")
def dlq_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """List the tenant's dead letters with the reason each was set aside."""

    async def show(client: Client) -> None:
        letters = await client.dead_letters.list()
        if not letters and not as_json:
            print(f"none: no dead letters for tenant {tenant!r}")
        for d in letters:
            if as_json:
                print(json.dumps({**d.__dict__, "data": readable(d.data)}, default=str))
            else:
                print(f"{d.seq:>7} {d.queue}/{d.kind:<10} {d.error}")

    with_client(server, tenant, prefix, connect_timeout, show)


@app.command("redrive")
def dlq_redrive(
    seqs: Annotated[list[int] | None, typer.Argument(help="dead-letter sequences")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter of the tenant")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Send dead letters back to their queue's input subject (after fixing the cause)."""

    async def redrive(client: Client) -> None:
        chosen = seqs or []
        if all_:
            chosen = [d.seq for d in await client.dead_letters.list() if d.redrivable]
        for seq in chosen:
            await client.dead_letters.redrive(seq)
            print(f"{seq}: re-driven")

    with_client(server, tenant, prefix, connect_timeout, redrive)
