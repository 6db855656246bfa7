"""``immortal schedule``: start workflows on an interval or a cron expression."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeout,
    InputFiles,
    Prefix,
    Server,
    Tenant,
    inputs,
    print_json,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client

__all__ = ["app"]

app = typer.Typer(add_completion=False, help="Start workflows on an interval or cron.")


@app.command("create")
def schedule_create(
    schedule_id: str,
    workflow_type: Annotated[str, typer.Argument(help="registered workflow name")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments, one JSON value each")] = None,
    input_file: InputFiles = None,
    every: Annotated[float | None, typer.Option(help="seconds between runs")] = None,
    cron: Annotated[str | None, typer.Option(help="cron expression (5 or 6 fields, UTC)")] = None,
    queue: str = "default",
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Create (or replace) a schedule."""

    values = inputs(args, input_file)

    async def create(client: Client) -> None:
        info = await client.schedules.create(
            schedule_id, workflow_type, *values, every=every, cron=cron, queue=queue
        )
        print_json(info.__dict__)

    try:
        with_client(server, tenant, prefix, connect_timeout, create)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command("list")
def schedule_list(
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """List this tenant's schedules."""

    async def show(client: Client) -> None:
        schedules = await client.schedules.list()
        if not schedules:
            print(f"none: no schedules for tenant {tenant!r}")
        for s in schedules:
            state = "paused" if s.paused else "active"
            print(f"{s.schedule_id:<24} {s.workflow_type:<20} {s.queue:<12} {state:<7} {s.spec}")

    with_client(server, tenant, prefix, connect_timeout, show)


def _schedule_action(verb: str) -> Callable[..., None]:
    def command(
        schedule_id: str,
        server: Server = DEFAULT_SERVER,
        tenant: Tenant = "default",
        prefix: Prefix = "imm",
        connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        async def act(client: Client) -> None:
            await getattr(client.schedules, verb)(schedule_id)
            print(f"{schedule_id}: {verb}d")

        with_client(server, tenant, prefix, connect_timeout, act)

    command.__doc__ = f"{verb.capitalize()} a schedule."
    return command


for _verb in ("pause", "resume", "delete"):
    app.command(_verb)(_schedule_action(_verb))
