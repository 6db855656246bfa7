"""``immortal workflow``: start runs, act on them, read their state and history."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    EVENT_HEADER,
    ConnectTimeout,
    InputFiles,
    Prefix,
    RunId,
    Server,
    Tenant,
    event_line,
    inputs,
    on_run,
    print_json,
    print_result,
    reveal,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client, WorkflowHandle

__all__ = ["app"]

app = typer.Typer(add_completion=False, help="Start runs and read their state.")


@app.command("start")
def workflow_start(
    workflow_type: Annotated[str, typer.Argument(help="registered workflow name")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments, one JSON value each")] = None,
    input_file: InputFiles = None,
    id: Annotated[str | None, typer.Option("--id", help="workflow id (default: random)")] = None,
    queue: str = "default",
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Start a run; print its workflow id and run id."""

    values = inputs(args, input_file)

    async def go(client: Client) -> None:
        handle = await client.start(workflow_type, *values, id=id, queue=queue)
        print(json.dumps({"workflow_id": handle.workflow_id, "run_id": handle.run_id}))
        if wait:
            await print_result(handle)

    with_client(server, tenant, prefix, connect_timeout, go)


@app.command("result")
def workflow_result(
    workflow_id: str,
    run: RunId = None,
    timeout: Annotated[float | None, typer.Option(help="seconds to wait")] = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Wait for a run to close and print its result."""
    on_run(
        server,
        tenant,
        prefix,
        connect_timeout,
        workflow_id,
        run,
        lambda h: print_result(h, timeout),
    )


@app.command("describe")
def workflow_describe(
    workflow_id: str,
    run: RunId = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Print where a run stands and what it waits for: its pending activities (attempt,
    last failure, last heartbeat, worker) and timers."""
    from immortal_hub.cli._describe import print_description

    async def describe(handle: WorkflowHandle[Any]) -> None:
        print_description(await handle.describe(), as_json)

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, describe)


@app.command("history")
def workflow_history(
    workflow_id: str,
    run: RunId = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="lossless JSON export (sealed payloads as stored)")
    ] = False,
    from_seq: Annotated[
        int, typer.Option("--from-seq", help="only the records from this stream sequence on")
    ] = 1,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="then print new events live until the run closes")
    ] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Print a run's history as a timeline grouped by step (or export it as JSON that
    `immortal replay` and immortal.history_from_json read back). With --from-seq or
    --follow, print the records one event a line, each with its stream sequence."""
    from immortal import format_timeline, history_to_json

    async def history(handle: WorkflowHandle[Any]) -> None:
        seqs: dict[int, int] = {}  # activities' seqs, which name their payloads' places
        if from_seq > 1 or follow:
            if not as_json:
                print(EVENT_HEADER, flush=True)
            async for seq, batch in handle.transitions(from_seq=from_seq, follow=follow):
                for e in batch if as_json else reveal(handle, batch, seqs):
                    print(event_line(seq, handle.workflow_id, e, as_json), flush=True)
            return
        events = await handle.history()
        if as_json:
            ids = {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "tenant": tenant}
            print(history_to_json(events, **ids))
            return
        print(f"workflow {handle.workflow_id}  run {handle.run_id}")
        print(format_timeline(reveal(handle, events, seqs)), end="")

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, history)


@app.command("verify")
def workflow_verify(
    workflow_id: str,
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Check a run's history chain: exit 1, naming each problem, if a message was deleted,
    altered or reordered."""

    async def verify(handle: WorkflowHandle[Any]) -> None:
        report = await handle.verify()
        for problem in report.problems:
            print(problem, file=sys.stderr)
        verdict = "intact" if report.ok else "BROKEN"
        print(
            f"{handle.run_id}: {report.transitions} transitions, {report.events} events, {verdict}"
        )
        if not report.ok:
            raise typer.Exit(1)

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, verify)


@app.command("signal")
def workflow_signal(
    workflow_id: str,
    name: Annotated[str, typer.Argument(help="signal name")],
    payload: Annotated[str | None, typer.Argument(help="payload, as one JSON value")] = None,
    input_file: Annotated[
        str | None,
        typer.Option("--input-file", "-i", help="a file holding the payload ('-': stdin)"),
    ] = None,
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Send a signal to a running workflow (recorded in its history in arrival order); a
    closed run refuses it (exit 1)."""
    given = inputs([payload] if payload is not None else None, [input_file] if input_file else None)
    value = given[0] if given else None

    async def send(handle: WorkflowHandle[Any]) -> None:
        await handle.signal(name, value)
        print(f"signal {name!r} sent to {handle.workflow_id} (run {handle.run_id})")

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, send)


@app.command("cancel")
def workflow_cancel(
    workflow_id: str,
    reason: Annotated[str, typer.Option(help="recorded with the request")] = "",
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Ask a run to cancel; its code may clean up before it closes. A closed run has
    nothing to cancel (exit 1)."""

    async def cancel(handle: WorkflowHandle[Any]) -> None:
        await handle.cancel(reason)  # a closed run: WorkflowClosedError, exit 1
        print(
            f"cancel requested for {handle.workflow_id} (run {handle.run_id}); "
            "its code may clean up before it closes"
        )

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, cancel)


@app.command("terminate")
def workflow_terminate(
    workflow_id: str,
    reason: Annotated[str, typer.Option(help="recorded in history with the termination")] = "",
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Close a run at once, without running its code (it cannot clean up: cancel lets it).
    A closed run has nothing to terminate (exit 1)."""

    async def terminate(handle: WorkflowHandle[Any]) -> None:
        await handle.terminate(reason)
        print(f"terminated {handle.workflow_id} (run {handle.run_id})")

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, terminate)


@app.command("status")
def workflow_status(
    workflow_id: str,
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Print the value the workflow last published with ctx.set_status."""

    async def status(handle: WorkflowHandle[Any]) -> None:
        print_json(await handle.status())

    on_run(server, tenant, prefix, connect_timeout, workflow_id, run, status)
