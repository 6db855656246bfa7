"""What operators look at: live workers, queue backlogs, retention of closed runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_SERVER,
    Prefix,
    Server,
    Tenant,
    print_json,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client

__all__ = ["queues", "retention", "workers"]


def queues(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Backlog and in-flight work per queue (what an autoscaler watches)."""

    async def go(client: Client) -> None:
        stats = await client.queues()
        if as_json:
            print_json([q.__dict__ for q in stats])
            return
        print(
            f"{'queue':<24} {'wf backlog':>10} {'wf held':>8} {'act backlog':>11} {'act held':>9}"
        )
        for q in stats:
            print(
                f"{q.queue:<24} {q.workflow_backlog:>10} {q.workflow_in_flight:>8} "
                f"{q.activity_backlog:>11} {q.activity_in_flight:>9}"
            )

    with_client(server, tenant, prefix, go)


def workers(
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """List the live workers of a tenant and what they serve."""

    async def go(client: Client) -> None:
        live = await client.workers(queue)
        if as_json:
            print_json([w.__dict__ for w in live])
            return
        if not live:
            where = f" on queue {queue!r}" if queue else ""
            print(f"no live workers for tenant {tenant!r}{where}")
        for w in live:
            print(
                f"{w.worker}  {w.host}:{w.pid}  v{w.version}  queues={','.join(w.queues)}  "
                f"slots={w.slots}  holding={w.tasks_held}\n"
                f"    workflows: {', '.join(w.workflows) or '-'}\n"
                f"    activities: {', '.join(w.activities) or '-'}"
            )

    with_client(server, tenant, prefix, go)


def retention(
    history: Annotated[
        float | None, typer.Option(help="seconds a closed run's history is kept")
    ] = None,
    logs: Annotated[float | None, typer.Option(help="seconds a closed run's logs are kept")] = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Show the tenant's retention of closed runs, or set it (with --history/--logs)."""

    async def go(client: Client) -> None:
        if history is None and logs is None:
            current = await client.retention()
        else:
            current = await client.set_retention(history=history, logs=logs)
        print_json(current.__dict__)

    with_client(server, tenant, prefix, go)
