"""``immortal``: run a hub, a whole dev stack, and talk to workflows.

immortal dev                        # nats-server + hub + worker + an example run
immortal hub --server nats://...    # one hub
immortal hub --tenant-limit '*=in_flight:200' --tenant-limit acme=in_flight:20,rate:100
immortal workflow start place_order '{"id": "o2", "items": ["x"], "cents": 100}'
immortal workflow result <workflow-id>
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from immortal import Client, WorkflowFailedError, WorkflowHandle
from immortal._codec import to_wire, unpack
from immortal._errors import PayloadError
from immortal.testing import NatsServer
from immortal_hub._hub import Hub
from immortal_hub._limits import TenantLimits, parse_tenant_limit

__all__ = ["main"]

app = typer.Typer(add_completion=False, help="Immortal: durable workflows on NATS JetStream.")
workflow_app = typer.Typer(add_completion=False, help="Start runs and read their state.")
app.add_typer(workflow_app, name="workflow")

Server = Annotated[str, typer.Option("--server", "-s", envvar="IMMORTAL_SERVER")]
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
    log_level: str = "INFO",
) -> None:
    """Run one hub (several may run at once against the same NATS)."""
    limits = _tenant_limits(tenant_limit or [])
    _logging(log_level)

    async def serve() -> None:
        h = Hub(
            server,
            prefix=prefix,
            max_in_flight=max_in_flight,
            concurrency=concurrency,
            tenant_limits=limits,
            ack_wait=ack_wait,
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

    async def go() -> None:
        async with Client(server, tenant=tenant, prefix=prefix) as client:
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

    asyncio.run(go())


@app.command()
def workers(
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """List the live workers of a tenant and what they serve."""

    async def go() -> None:
        async with Client(server, tenant=tenant, prefix=prefix) as client:
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

    asyncio.run(go())


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

    async def go() -> None:
        async with Client(server, tenant=tenant, prefix=prefix) as client:
            handle = await client.start(workflow_type, *_json_args(args or []), id=id, queue=queue)
            print(json.dumps({"workflow_id": handle.workflow_id, "run_id": handle.run_id}))
            if wait:
                await _result(handle)

    asyncio.run(go())


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

    async def go() -> None:
        async with Client(server, tenant=tenant, prefix=prefix) as client:
            await action(await client.get_handle(workflow_id, run))

    asyncio.run(go())


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
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
) -> None:
    """Print a run's history, one event a line (or as JSON)."""

    async def history(handle: WorkflowHandle[Any]) -> None:
        events = await handle.history()
        if as_json:
            print(json.dumps([e.model_dump(mode="json") for e in events], indent=2))
            return
        for e in events:
            cause = f" <- {e.caused_by}" if e.caused_by else ""
            attrs = {k: _readable(v) for k, v in e.attrs.items()}
            print(f"{e.id:>4} {e.type.value:<24}{cause:<8} {json.dumps(attrs, default=str)}")

    _on_run(server, tenant, prefix, workflow_id, run, history)


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
