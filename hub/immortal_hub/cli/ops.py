"""What operators look at: live workers, queue backlogs, retention of closed runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeout,
    Prefix,
    Server,
    Tenant,
    duration_text,
    parse_duration,
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
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Backlog and in-flight work per queue (what an autoscaler watches)."""

    async def go(client: Client) -> None:
        stats = await client.queues()
        if as_json:
            print_json([q.__dict__ for q in stats])
            return
        if not stats:
            print(f"none: no queues for tenant {tenant!r}")
            return
        print(
            f"{'queue':<24} {'wf backlog':>10} {'wf held':>8} {'act backlog':>11} {'act held':>9}"
        )
        for q in stats:
            print(
                f"{q.queue:<24} {q.workflow_backlog:>10} {q.workflow_in_flight:>8} "
                f"{q.activity_backlog:>11} {q.activity_in_flight:>9}"
            )

    with_client(server, tenant, prefix, connect_timeout, go)


def workers(
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """List the live workers of a tenant and what they serve."""

    from immortal._fingerprints import conflicts

    async def go(client: Client) -> None:
        live = await client.workers(queue)
        if as_json:
            print_json([w.__dict__ for w in live])
            return
        if not live:
            where = f" on queue {queue!r}" if queue else ""
            print(f"none: no live workers for tenant {tenant!r}{where}")
        for w in live:
            slots = f"wf {w.slots.get('workflow', '?')} / act {w.slots.get('activity', '?')}"
            print(
                f"{w.worker}  {w.host}:{w.pid}  v{w.version}  queues {','.join(w.queues)}  "
                f"slots {slots}  holding {w.tasks_held}\n"
                f"    workflows: {', '.join(w.workflows) or '-'}\n"
                f"    activities: {', '.join(w.activities) or '-'}"
            )
        for conflict in conflicts(live):
            print(f"CONFLICT: {conflict}")

    with_client(server, tenant, prefix, connect_timeout, go)


def retention(
    history: Annotated[
        str | None, typer.Option(help="how long a closed run's history is kept (90s, 12h, 7d)")
    ] = None,
    logs: Annotated[str | None, typer.Option(help="how long a closed run's logs are kept")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Show the tenant's retention of closed runs, or set it (with --history/--logs; the
    one not given stays as it is)."""
    keep_history = parse_duration(history) if history is not None else None
    keep_logs = parse_duration(logs) if logs is not None else None

    async def go(client: Client) -> None:
        current = await client.retention()
        if keep_history is not None or keep_logs is not None:
            current = await client.set_retention(
                history=keep_history if keep_history is not None else current.history,
                logs=keep_logs if keep_logs is not None else current.logs,
            )
        if as_json:
            print_json(current.__dict__)
            return
        for what, kept in (("history", current.history), ("logs", current.logs)):
            shown = f"{duration_text(kept)} ({kept:g} s)" if kept else "the stream's limits"
            print(f"{what:<8} {shown}")

    with_client(server, tenant, prefix, connect_timeout, go)
