"""``immortal hub``: run one hub."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import (
    DEFAULT_SERVER,
    Prefix,
    Server,
    connect_security,
    setup_logging,
)

if TYPE_CHECKING:
    from immortal_hub._limits import TenantLimits

__all__ = ["hub"]


def hub(
    server: Server = DEFAULT_SERVER,
    prefix: Prefix = "imm",
    max_in_flight: Annotated[
        int, typer.Option(help="inputs held (queued or being applied), shared fairly by tenants")
    ] = 1024,
    concurrency: Annotated[
        int, typer.Option(help="inputs applied at once; slots go round-robin to tenants")
    ] = 64,
    max_writes: Annotated[
        int,
        typer.Option(
            min=1,
            help="JetStream writes in flight at once (a quiet tenant's never wait)",
        ),
    ] = 8,
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
    monitor: Annotated[
        str | None,
        typer.Option(
            envvar="IMMORTAL_MONITOR",
            help="nats-server's monitoring URL, to check that JetStream syncs every write "
            "(default: port 8222 of the server's host; off: no check)",
        ),
    ] = None,
    require_signatures: Annotated[
        bool,
        typer.Option(
            envvar="IMMORTAL_REQUIRE_SIGNATURES",
            help="refuse unsigned inputs of every tenant (auth on, a tenant with signing "
            "keys registered requires them anyway)",
        ),
    ] = False,
    log_level: str = "INFO",
) -> None:
    """Run one hub (several may run at once against the same NATS)."""
    limits = _tenant_limits(tenant_limit or [])
    setup_logging(log_level)

    async def serve() -> None:
        from immortal._connect import display_urls
        from immortal_hub._durability import check_sync_always
        from immortal_hub._hub import Hub
        from immortal_hub._resources import ResourceSettings

        h = Hub(
            server,
            security=connect_security(),  # auth on: the hub's token (immortal-system:hub)
            prefix=prefix,
            max_in_flight=max_in_flight,
            concurrency=concurrency,
            max_writes=max_writes,
            tenant_limits=limits,
            ack_wait=ack_wait,
            settings=ResourceSettings(replicas=replicas),
            require_signatures=require_signatures,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # A signal while the hub still waits for NATS abandons the start.
        starting = asyncio.ensure_future(h.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done() and not h._running:  # still connecting: nothing held yet
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        stopping.cancel()
        await starting
        if monitor != "off":
            await check_sync_always(h.nc, display_urls(server), monitor)
        print(f"hub {h.hub_id} ready on {display_urls(server)}", flush=True)
        await stop.wait()
        await h.stop()

    asyncio.run(serve())


def _tenant_limits(specs: list[str]) -> dict[str, TenantLimits]:
    from immortal_hub._limits import parse_tenant_limit

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
