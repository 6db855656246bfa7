"""``immortal events`` and ``immortal logs``: the tenant's event stream, a run's log lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    EVENT_HEADER,
    ConnectTimeout,
    Prefix,
    RunId,
    Server,
    Tenant,
    closing,
    event_line,
    on_run,
    reveal,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client, WorkflowHandle
    from immortal._logs import LogLine

__all__ = ["events", "logs"]

LOG_HEADER = f"{'seq':>7} {'time (UTC)':<12} {'level':<7} [where @ worker] message"
# After the run closed, how long its workers' last lines may still take to arrive.
_AFTER_CLOSE_S = 1.0


def events(
    from_seq: Annotated[int, typer.Option("--from-seq", help="start at this stream sequence")] = 1,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object a line, as history --json")
    ] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """The tenant's whole event stream, every run, in the order the hubs appended it."""

    async def go(client: Client) -> None:
        from immortal.codec import reveal_events

        printed = 0
        seqs: dict[tuple[str, str], dict[int, int]] = {}  # per run: activities' seqs
        async with closing(client.events(from_seq=from_seq, follow=follow)) as stream:
            async for seq, workflow_id, run_id, sealed in stream:
                run = (workflow_id, run_id)
                e = sealed
                if not as_json:
                    ids = (client.tenant, workflow_id, run_id)
                    e = reveal_events([sealed], client.codec, *ids, seqs=seqs.setdefault(run, {}))[
                        0
                    ]
                if not printed and not as_json:
                    print(EVENT_HEADER)
                printed += 1
                print(event_line(seq, workflow_id, e, as_json, run_id), flush=True)
        if not printed and not as_json:
            print("none: no events")

    with contextlib.suppress(KeyboardInterrupt):
        with_client(server, tenant, prefix, connect_timeout, go)


def logs(
    workflow_id: str,
    run: RunId = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="keep printing new lines until the run closes"),
    ] = False,
    forever: Annotated[
        bool, typer.Option("--forever", help="with --follow: keep printing after it closes")
    ] = False,
    from_seq: Annotated[int, typer.Option("--from-seq", help="start at this stream sequence")] = 1,
    with_history: Annotated[
        bool, typer.Option("--with-history", help="each line under its step of the timeline")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """A run's log lines from all its workers, in one ordered stream."""
    if with_history and follow:
        raise typer.BadParameter("--with-history prints a snapshot; drop --follow")

    async def show(handle: WorkflowHandle[Any]) -> None:
        if with_history:
            await _with_history(handle, from_seq)
            return
        printed = 0
        async for sealed in _lines(handle, from_seq, follow, forever):
            entry = _opened(handle, sealed)
            if not printed and not as_json:
                print(LOG_HEADER)
            printed += 1
            print(json.dumps(entry.__dict__, default=str) if as_json else _line(entry), flush=True)
        if not printed and not as_json:
            print(f"none: no log lines for run {handle.run_id} of {handle.workflow_id!r}")

    with contextlib.suppress(KeyboardInterrupt):
        on_run(server, tenant, prefix, connect_timeout, workflow_id, run, show)


async def _lines(
    handle: WorkflowHandle[Any], from_seq: int, follow: bool, forever: bool
) -> AsyncIterator[LogLine]:
    """The run's log lines; following, until a moment after the run closed (or forever)."""
    lines = handle.logs(from_seq=from_seq, follow=follow)
    if not follow or forever:
        async with closing(lines):
            async for entry in lines:
                yield entry
        return
    queue: asyncio.Queue[LogLine] = asyncio.Queue()
    tailing = asyncio.create_task(_into(lines, queue))
    closed = asyncio.create_task(_until_closed(handle))
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            waits = {getting, tailing} | ({closed} if not closed.done() else set())
            timeout = _AFTER_CLOSE_S if closed.done() else None
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when="FIRST_COMPLETED")
            if getting in done:
                yield getting.result()
                continue
            getting.cancel()
            if tailing in done:
                tailing.result()  # the tail failed: say why
            if not done:
                return  # closed, and nothing more came for a moment
    finally:
        for task in (tailing, closed):
            task.cancel()
        await asyncio.gather(tailing, closed, return_exceptions=True)


async def _into(lines: AsyncIterator[LogLine], queue: asyncio.Queue[LogLine]) -> None:
    async with closing(lines):
        async for entry in lines:
            queue.put_nowait(entry)


async def _until_closed(handle: WorkflowHandle[Any]) -> None:
    if (await handle.describe()).status.closed:
        return
    records = handle.transitions(follow=True)
    async with closing(records):
        async for _ in records:  # it ends when the run closes
            pass


async def _with_history(handle: WorkflowHandle[Any], from_seq: int) -> None:
    """The run's timeline, each log line under the event it belongs to."""
    from immortal import format_timeline

    notes: dict[int, list[str]] = {}
    async with closing(handle.logs(from_seq=from_seq)) as lines:
        async for entry in lines:
            entry = _opened(handle, entry)
            notes.setdefault(entry.event_id or 0, []).append(f"log {_line(entry)}")
    print(f"workflow {handle.workflow_id}  run {handle.run_id}")
    for note in notes.pop(0, []):  # lines of no event: before the first
        print(f"{'':>18}{note}")
    events = reveal(handle, await handle.history(), {})
    print(format_timeline(events, notes=notes), end="")


def _opened(handle: WorkflowHandle[Any], entry: LogLine) -> LogLine:
    """The line with its message and fields opened with the key ring, or saying why not."""
    from immortal.codec import reveal_log

    return reveal_log(entry, handle.client.codec, handle.client.tenant)


def _line(entry: LogLine) -> str:
    where = f"{entry.activity} attempt {entry.attempt}" if entry.activity else "workflow"
    fields = f" {json.dumps(entry.fields, default=str)}" if entry.fields else ""
    stamp = datetime.fromtimestamp(entry.ts, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    head = f"{entry.seq:>7} {stamp:<12} {entry.level:<7}"
    return f"{head} [{where} @ {entry.worker}] {entry.message}{fields}"
