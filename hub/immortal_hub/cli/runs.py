"""``immortal workflow list`` and ``immortal workflow runs``: finding runs.

immortal workflow list                              # newest first: open runs, then closed
immortal workflow list --status failed --type place_order --since 1h
immortal workflow list --page open:1234             # the next page, as the last one said
immortal workflow runs order-42                     # every run of one workflow id
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

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
    from immortal import Client, RunInfo

__all__ = ["parse_since", "workflow_list", "workflow_runs"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_COLUMNS = ("WORKFLOW ID", "RUN ID", "TYPE", "QUEUE", "STATUS", "STARTED", "CLOSED")


def workflow_list(
    status: Annotated[
        str | None,
        typer.Option(
            help="running, completed, failed, cancelled, terminated, continued_as_new, or closed"
        ),
    ] = None,
    workflow_type: Annotated[str | None, typer.Option("--type", help="workflow type")] = None,
    queue: Annotated[str | None, typer.Option(help="the runs' queue")] = None,
    since: Annotated[
        str | None, typer.Option(help="started within this long: 90s, 15m, 1h, 2d, 1h30m")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="runs per page (up to 1000)")] = 50,
    page: Annotated[
        str | None, typer.Option(help="the page token a previous listing printed")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """List runs, newest first: open runs (newest started first), then closed ones
    (newest closed first). Prints the token of the next page, if there is one."""
    after = datetime.now(UTC) - parse_since(since) if since else None

    async def go(client: Client) -> None:
        found = await client.list_workflows(
            status=status,
            type=workflow_type,
            queue=queue,
            started_after=after,
            limit=limit,
            page_token=page,
        )
        if as_json:
            runs = [_as_dict(r) for r in found.runs]
            print(json.dumps({"runs": runs, "next_page_token": found.next_page_token}, indent=2))
            return
        _table([_row(r) for r in found.runs])
        if found.next_page_token is not None:
            print(f"more: --page {found.next_page_token}", file=sys.stderr)

    with_client(server, tenant, prefix, connect_timeout, go)


def workflow_runs(
    workflow_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON list")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """List every run of one workflow id, newest first: its continue-as-new chain and the
    runs of earlier uses of the id (those whose history is kept)."""

    async def go(client: Client) -> None:
        from immortal import WorkflowNotFoundError

        runs = await client.workflow_runs(workflow_id)
        if not runs:
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r}")
        if as_json:
            print(json.dumps([_as_dict(r) for r in runs], indent=2))
            return
        rows = [(*_row(r)[1:], _link(r)) for r in runs]
        _table(rows, ("RUN ID", "TYPE", "QUEUE", "STATUS", "STARTED", "CLOSED", "CONTINUED"))

    with_client(server, tenant, prefix, connect_timeout, go)


def parse_since(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w``, ``1h30m``, or plain seconds."""
    spec = text.strip().lower()
    try:
        return timedelta(seconds=float(spec))
    except ValueError:
        pass
    parts = _SPAN.findall(spec)
    if not parts or "".join(n + u for n, u in parts) != spec:
        raise typer.BadParameter(f"{text!r} is not a duration: use e.g. 90s, 15m, 1h, 2d, 1h30m")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def _row(run: RunInfo) -> tuple[str, ...]:
    closed = _when(run.closed_at) if run.closed_at else "-"
    return (
        run.workflow_id,
        run.run_id,
        run.workflow_type,
        run.queue,
        str(run.status),
        _when(run.started_at),
        closed,
    )


def _link(run: RunInfo) -> str:
    if run.continued_from:
        return f"from {run.continued_from}"
    return f"as {run.continued_to}" if run.continued_to else ""


def _as_dict(run: RunInfo) -> dict[str, Any]:
    return {
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "workflow_type": run.workflow_type,
        "queue": run.queue,
        "status": str(run.status),
        "started_at": run.started_at.isoformat(),
        "closed_at": run.closed_at.isoformat() if run.closed_at else None,
        "continued_from": run.continued_from,
        "continued_to": run.continued_to,
    }


def _when(at: datetime) -> str:
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...] = _COLUMNS) -> None:
    if not rows:
        print("none")
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
