"""``immortal``: run a hub, a whole dev stack, and talk to workflows.

immortal dev                        # nats-server + hub + worker + an example run
immortal hub --server nats://...    # one hub
immortal hub --server nats://a:4222,nats://b:4222,nats://c:4222 --replicas 3   # on a cluster
immortal hub --tenant-limit '*=in_flight:200' --tenant-limit acme=in_flight:20,rate:100
immortal workflow start place_order '{"id": "o2", "items": ["x"], "cents": 100}'
immortal workflow result <workflow-id>
immortal workflow signal <workflow-id> approve '"yes"'
immortal schedule create nightly report --cron "0 3 * * *"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from immortal import Client, WorkflowFailedError, WorkflowHandle
from immortal._codec import to_wire, unpack
from immortal._errors import PayloadError
from immortal._logs import LogLine
from immortal.security import AuthError, ConnectSecurity
from immortal.testing import NatsServer
from immortal_hub._hub import Hub
from immortal_hub._limits import TenantLimits, parse_tenant_limit
from immortal_hub._resources import ResourceSettings

__all__ = ["main"]

app = typer.Typer(add_completion=False, help="Immortal: durable workflows on NATS JetStream.")
workflow_app = typer.Typer(add_completion=False, help="Start runs and read their state.")
app.add_typer(workflow_app, name="workflow")
dlq_app = typer.Typer(add_completion=False, help="Inputs hubs could not apply: list, re-drive.")
app.add_typer(dlq_app, name="dlq")
schedule_app = typer.Typer(add_completion=False, help="Start workflows on an interval or cron.")
app.add_typer(schedule_app, name="schedule")

Server = Annotated[
    str,
    typer.Option(
        "--server", "-s", envvar="IMMORTAL_SERVER", help="NATS URL; a cluster's, comma-separated"
    ),
]
Tenant = Annotated[str, typer.Option(envvar="IMMORTAL_TENANT")]
Prefix = Annotated[str, typer.Option(envvar="IMMORTAL_PREFIX")]
DEFAULT_SERVER = "nats://127.0.0.1:4222"


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@app.command()
def hub(
    server: Server = DEFAULT_SERVER,
    prefix: Prefix = "imm",
    max_in_flight: Annotated[
        int, typer.Option(help="inputs held (queued or being applied), shared fairly by tenants")
    ] = 1024,
    concurrency: Annotated[
        int, typer.Option(help="inputs applied at once; slots go round-robin to tenants")
    ] = 64,
    tenant_limit: Annotated[
        list[str] | None,
        typer.Option(
            help="TENANT=in_flight:N,rate:R[,burst:B] (per hub; repeatable; TENANT * for "
            "every tenant without its own)"
        ),
    ] = None,
    ack_wait: Annotated[
        float, typer.Option(help="seconds before a dead hub's inputs go to another hub")
    ] = 5.0,
    replicas: Annotated[
        int,
        typer.Option(
            min=1, help="copies of each stream and bucket the hub creates (3 on a 3-node cluster)"
        ),
    ] = 1,
    log_level: str = "INFO",
) -> None:
    """Run one hub (several may run at once against the same NATS)."""
    limits = _tenant_limits(tenant_limit or [])
    _logging(log_level)

    async def serve() -> None:
        h = Hub(
            server,
            security=_if_set(ConnectSecurity.from_env()),  # $IMMORTAL_TOKEN, $IMMORTAL_TLS_*
            prefix=prefix,
            max_in_flight=max_in_flight,
            concurrency=concurrency,
            tenant_limits=limits,
            ack_wait=ack_wait,
            settings=ResourceSettings(replicas=replicas),
        )
        await h.start()
        print(f"hub {h.hub_id} ready on {server}", flush=True)
        await _until_signalled()
        await h.stop()

    asyncio.run(serve())


def _tenant_limits(specs: list[str]) -> dict[str, TenantLimits]:
    limits: dict[str, TenantLimits] = {}
    for spec in specs:
        try:
            tenant, parsed = parse_tenant_limit(spec)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tenant-limit") from exc
        if tenant in limits:
            raise typer.BadParameter(f"{tenant!r} given twice", param_hint="--tenant-limit")
        limits[tenant] = parsed
    return limits


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="NATS port (0: any free port)")] = 4222,
    store: Annotated[Path, typer.Option(help="JetStream data directory")] = Path(".immortal-dev"),
    example: Annotated[bool, typer.Option(help="start one example run")] = True,
    log_level: str = "WARNING",
) -> None:
    """Start nats-server, a hub and a worker with the bundled example, then run it once."""
    _logging(log_level)
    asyncio.run(_dev(port if port else -1, store.resolve(), example))


async def _dev(port: int, store: Path, example: bool) -> None:
    server = NatsServer(store_dir=store, port=port)
    await server.start()
    url = server.url
    print(f"nats-server  {url}  (JetStream in {store}/, sync_interval: always)", flush=True)
    h = Hub(url)
    await h.start()
    print(f"hub          {h.hub_id}", flush=True)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "immortal_worker",
        "immortal.examples.orders",
        "--server",
        url,
        "--log-level",
        "WARNING",
        start_new_session=True,
    )
    print(f"worker       pid {worker.pid} serving immortal.examples.orders", flush=True)
    try:
        if example:
            from immortal.examples.orders import Order, place_order

            async with Client(url) as client:
                async with asyncio.timeout(30):  # the run would wait durably; show it run now
                    while not await client.workers("default"):  # noqa: ASYNC110 (a KV poll)
                        await asyncio.sleep(0.1)
                handle = await client.start(
                    place_order, Order(id="first-order", items=["book", "lamp"], cents=4200)
                )
                result = await handle.result(timeout=60)
                print(
                    f"example run  {handle.workflow_id} -> {result.model_dump_json()}", flush=True
                )
        print(
            "\nImmortal is running. In another shell try:\n"
            f"  uv run immortal workflow start place_order "
            f'\'{{"id": "o2", "items": ["pen"], "cents": 150}}\' --id o2 -s {url}\n'
            f"  uv run immortal workflow result o2 -s {url}\n"
            f"  uv run immortal workflow history o2 -s {url}\n"
            f"  uv run immortal logs o2 --with-history -s {url}\n"
            "Ctrl-C stops everything (the data stays in the store directory).",
            flush=True,
        )
        await _until_signalled()
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await worker.wait()
        await h.stop()
        await server.stop()
        print("stopped", flush=True)


@app.command()
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
            _print_json([q.__dict__ for q in stats])
            return
        print(
            f"{'queue':<24} {'wf backlog':>10} {'wf held':>8} {'act backlog':>11} {'act held':>9}"
        )
        for q in stats:
            print(
                f"{q.queue:<24} {q.workflow_backlog:>10} {q.workflow_in_flight:>8} "
                f"{q.activity_backlog:>11} {q.activity_in_flight:>9}"
            )

    _with_client(server, tenant, prefix, go)


@app.command()
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
            _print_json([w.__dict__ for w in live])
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

    _with_client(server, tenant, prefix, go)


def _json_args(args: list[str]) -> list[Any]:
    out = []
    for a in args:
        try:
            out.append(json.loads(a))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"argument {a!r} is not JSON: {exc}") from exc
    return out


def _print_json(value: Any) -> None:
    print(json.dumps(to_wire(value), indent=2, default=str))


def _with_client(
    server: str, tenant: str, prefix: str, action: Callable[[Client], Awaitable[None]]
) -> None:
    """Connect as the tenant, run ``action``, disconnect. With a token ($IMMORTAL_TOKEN,
    $IMMORTAL_TOKEN_COMMAND; TLS from $IMMORTAL_TLS_*) the tenant is the token's."""
    security = ConnectSecurity.from_env()
    asked = None if security.token is not None and tenant == "default" else tenant

    async def go() -> None:
        async with Client(
            server, tenant=asked, prefix=prefix, security=_if_set(security)
        ) as client:
            await action(client)

    try:
        asyncio.run(go())
    except AuthError as exc:  # a refusal is one line naming it, not a traceback
        print(f"immortal: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def _if_set(security: ConnectSecurity) -> ConnectSecurity | None:
    return security if security.token is not None or security.tls.configured else None


@workflow_app.command("start")
def workflow_start(
    workflow_type: Annotated[str, typer.Argument(help="registered workflow name")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments, one JSON value each")] = None,
    id: Annotated[str | None, typer.Option("--id", help="workflow id (default: random)")] = None,
    queue: str = "default",
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Start a run; print its workflow id and run id."""

    async def go(client: Client) -> None:
        handle = await client.start(workflow_type, *_json_args(args or []), id=id, queue=queue)
        print(json.dumps({"workflow_id": handle.workflow_id, "run_id": handle.run_id}))
        if wait:
            await _result(handle)

    _with_client(server, tenant, prefix, go)


async def _result(handle: Any, timeout: float | None = None) -> None:
    try:
        _print_json(await handle.result(timeout=timeout))
    except WorkflowFailedError as exc:
        print(f"failed: {exc.cause}", file=sys.stderr)
        raise typer.Exit(1) from exc


RunId = Annotated[str | None, typer.Option("--run", help="run id (default: newest)")]


def _on_run(
    server: str,
    tenant: str,
    prefix: str,
    workflow_id: str,
    run: str | None,
    action: Callable[[WorkflowHandle[Any]], Awaitable[None]],
) -> None:
    """Connect, find the run (the newest of the workflow id unless given), act on it."""

    async def on_run(client: Client) -> None:
        await action(await client.get_handle(workflow_id, run))

    _with_client(server, tenant, prefix, on_run)


@workflow_app.command("result")
def workflow_result(
    workflow_id: str,
    run: RunId = None,
    timeout: Annotated[float | None, typer.Option(help="seconds to wait")] = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Wait for a run to close and print its result."""
    _on_run(server, tenant, prefix, workflow_id, run, lambda h: _result(h, timeout))


@workflow_app.command("describe")
def workflow_describe(
    workflow_id: str,
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Print where a run stands."""

    async def describe(handle: WorkflowHandle[Any]) -> None:
        _print_json((await handle.describe()).__dict__)

    _on_run(server, tenant, prefix, workflow_id, run, describe)


@workflow_app.command("history")
def workflow_history(
    workflow_id: str,
    run: RunId = None,
    as_json: Annotated[bool, typer.Option("--json", help="lossless JSON export")] = False,
    from_seq: Annotated[
        int, typer.Option("--from-seq", help="only the records from this stream sequence on")
    ] = 1,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="then print new events live until the run closes")
    ] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Print a run's history as a timeline grouped by step (or export it as JSON that
    `immortal replay` and immortal.history_from_json read back). With --from-seq or
    --follow, print the records one event a line, each with its stream sequence."""
    from immortal import format_timeline, history_to_json

    async def history(handle: WorkflowHandle[Any]) -> None:
        if from_seq > 1 or follow:
            async for seq, batch in handle.transitions(from_seq=from_seq, follow=follow):
                for e in batch:
                    print(_event_line(seq, handle.workflow_id, e, as_json), flush=True)
            return
        events = await handle.history()
        if as_json:
            ids = {"workflow_id": handle.workflow_id, "run_id": handle.run_id, "tenant": tenant}
            print(history_to_json(events, **ids))
            return
        print(f"workflow {handle.workflow_id}  run {handle.run_id}")
        print(format_timeline(events), end="")

    _on_run(server, tenant, prefix, workflow_id, run, history)


@workflow_app.command("verify")
def workflow_verify(
    workflow_id: str,
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
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

    _on_run(server, tenant, prefix, workflow_id, run, verify)


@app.command()
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
            print(_event_line(seq, workflow_id, e, as_json, run_id), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        _with_client(server, tenant, prefix, go)


@app.command()
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
        _on_run(server, tenant, prefix, workflow_id, run, show)


@app.command()
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
        _print_json(current.__dict__)

    _with_client(server, tenant, prefix, go)


@workflow_app.command("signal")
def workflow_signal(
    workflow_id: str,
    name: Annotated[str, typer.Argument(help="signal name")],
    payload: Annotated[str, typer.Argument(help="payload, as one JSON value")] = "null",
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Send a signal to a running workflow (recorded in its history in arrival order)."""
    [value] = _json_args([payload])

    async def send(handle: WorkflowHandle[Any]) -> None:
        await handle.signal(name, value)

    _on_run(server, tenant, prefix, workflow_id, run, send)


@workflow_app.command("cancel")
def workflow_cancel(
    workflow_id: str,
    reason: Annotated[str, typer.Option(help="recorded with the request")] = "",
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Ask a run to cancel; its code may clean up before it closes."""

    async def cancel(handle: WorkflowHandle[Any]) -> None:
        await handle.cancel(reason)

    _on_run(server, tenant, prefix, workflow_id, run, cancel)


@workflow_app.command("status")
def workflow_status(
    workflow_id: str,
    run: RunId = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Print the value the workflow last published with ctx.set_status."""

    async def status(handle: WorkflowHandle[Any]) -> None:
        _print_json(await handle.status())

    _on_run(server, tenant, prefix, workflow_id, run, status)


@schedule_app.command("create")
def schedule_create(
    schedule_id: str,
    workflow_type: Annotated[str, typer.Argument(help="registered workflow name")],
    args: Annotated[list[str] | None, typer.Argument(help="arguments, one JSON value each")] = None,
    every: Annotated[float | None, typer.Option(help="seconds between runs")] = None,
    cron: Annotated[str | None, typer.Option(help="cron expression (5 or 6 fields, UTC)")] = None,
    queue: str = "default",
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Create (or replace) a schedule."""

    async def create(client: Client) -> None:
        info = await client.schedules.create(
            schedule_id, workflow_type, *_json_args(args or []), every=every, cron=cron, queue=queue
        )
        _print_json(info.__dict__)

    try:
        _with_client(server, tenant, prefix, create)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@schedule_app.command("list")
def schedule_list(
    server: Server = DEFAULT_SERVER, tenant: Tenant = "default", prefix: Prefix = "imm"
) -> None:
    """List this tenant's schedules."""

    async def show(client: Client) -> None:
        for s in await client.schedules.list():
            state = "paused" if s.paused else "active"
            print(f"{s.schedule_id:<24} {s.workflow_type:<20} {s.queue:<12} {state:<7} {s.spec}")

    _with_client(server, tenant, prefix, show)


def _schedule_action(verb: str) -> Callable[..., None]:
    def command(
        schedule_id: str,
        server: Server = DEFAULT_SERVER,
        tenant: Tenant = "default",
        prefix: Prefix = "imm",
    ) -> None:
        async def act(client: Client) -> None:
            await getattr(client.schedules, verb)(schedule_id)
            print(f"{schedule_id}: {verb}d")

        _with_client(server, tenant, prefix, act)

    command.__doc__ = f"{verb.capitalize()} a schedule."
    return command


for _verb in ("pause", "resume", "delete"):
    schedule_app.command(_verb)(_schedule_action(_verb))


@dlq_app.command("list")
def dlq_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """List the tenant's dead letters with the reason each was set aside."""

    async def show(client: Client) -> None:
        for d in await client.dead_letters.list():
            if as_json:
                print(json.dumps({**d.__dict__, "data": _readable(d.data)}, default=str))
            else:
                print(f"{d.seq:>7} {d.queue}/{d.kind:<10} {d.error}")

    _with_client(server, tenant, prefix, show)


@dlq_app.command("redrive")
def dlq_redrive(
    seqs: Annotated[list[int] | None, typer.Argument(help="dead-letter sequences")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter of the tenant")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Send dead letters back to their queue's input subject (after fixing the cause)."""

    async def redrive(client: Client) -> None:
        chosen = seqs or []
        if all_:
            chosen = [d.seq for d in await client.dead_letters.list() if d.redrivable]
        for seq in chosen:
            await client.dead_letters.redrive(seq)
            print(f"{seq}: re-driven")

    _with_client(server, tenant, prefix, redrive)


def _event_line(
    seq: int, workflow_id: str, e: Any, as_json: bool, run_id: str | None = None
) -> str:
    if as_json:
        line = {"seq": seq, "workflow_id": workflow_id, "run_id": run_id}
        return json.dumps({**line, "event": e.model_dump(mode="json")})
    attrs = json.dumps({k: _readable(v) for k, v in e.attrs.items()}, default=str)
    return f"{seq:>7} {workflow_id} {e.id:>4} {e.type.value:<24} {attrs}"


def _readable(value: Any) -> Any:
    """Payloads are msgpack bytes on the wire; show them decoded."""
    if isinstance(value, bytes):
        try:
            return to_wire(unpack(value))
        except PayloadError:
            return f"<{len(value)} bytes>"
    return value


def main() -> None:
    app()


@app.command()
def replay(
    histories: Annotated[
        list[Path], typer.Argument(help="JSON exports (immortal workflow history ID --json)")
    ],
    workflow: Annotated[
        list[str],
        typer.Option("--workflow", "-w", help="module:attribute holding the workflow code"),
    ],
) -> None:
    """Replay recorded histories against workflow code (no server): exit 0 if they replay
    cleanly, 1 printing the first divergence, 2 if one cannot be replayed.

    The same command as `immortal-worker replay`, which this runs as a subprocess
    (`python -m immortal_worker replay ...`): the hub package does not import the worker.
    """
    import subprocess

    args = [sys.executable, "-m", "immortal_worker", "replay", *map(str, histories)]
    for ref in workflow:
        args += ["--workflow", ref]
    raise typer.Exit(subprocess.run(args, check=False).returncode)
