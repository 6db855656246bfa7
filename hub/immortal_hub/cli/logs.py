"""``immortal events`` and ``immortal logs``: the tenant's event stream, a run's log lines."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from immortal_hub.cli._common import (
    DEFAULT_SERVER,
    Prefix,
    RunId,
    Server,
    Tenant,
    event_line,
    on_run,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client, WorkflowHandle
    from immortal._logs import LogLine

__all__ = ["events", "logs"]


def events(
    from_seq: Annotated[int, typer.Option("--from-seq", help="start at this stream sequence")] = 1,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """The tenant's whole event stream, every run, in the order the hubs appended it."""

    async def go(client: Client) -> None:
        async for seq, workflow_id, run_id, e in client.events(from_seq=from_seq, follow=follow):
            print(event_line(seq, workflow_id, e, as_json, run_id), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        with_client(server, tenant, prefix, go)


def logs(
    workflow_id: str,
    run: RunId = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    from_seq: Annotated[int, typer.Option("--from-seq", help="start at this stream sequence")] = 1,
    with_history: Annotated[
        bool, typer.Option("--with-history", help="each line under the event it belongs to")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """A run's log lines from all its workers, in one ordered stream."""
    if with_history and follow:
        raise typer.BadParameter("--with-history prints a snapshot; drop --follow")

    def line(entry: LogLine) -> str:
        if as_json:
            return json.dumps(entry.__dict__, default=str)
        where = f"{entry.activity} attempt {entry.attempt}" if entry.activity else "workflow"
        fields = f" {json.dumps(entry.fields, default=str)}" if entry.fields else ""
        stamp = datetime.fromtimestamp(entry.ts, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        return (
            f"{entry.seq:>7} {stamp} {entry.level:<7} [{where} @ {entry.worker}] "
            f"{entry.message}{fields}"
        )

    async def show(handle: WorkflowHandle[Any]) -> None:
        if not with_history:
            async for entry in handle.logs(from_seq=from_seq, follow=follow):
                print(line(entry), flush=True)
            return
        by_event: dict[int, list[LogLine]] = {}
        async for entry in handle.logs(from_seq=from_seq):
            by_event.setdefault(entry.event_id or 0, []).append(entry)
        for entry in by_event.pop(0, []):
            print("      " + line(entry))
        for e in await handle.history():
            print(f"{e.id:>4} {e.type.value}")
            for entry in by_event.pop(e.id, []):
                print("      " + line(entry))

    with contextlib.suppress(KeyboardInterrupt):
        on_run(server, tenant, prefix, workflow_id, run, show)
