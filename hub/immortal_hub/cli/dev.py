"""``immortal dev``: nats-server, a hub and a worker on this machine, for trying things."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from immortal_hub.cli._common import setup_logging, until_signalled

__all__ = ["dev"]


def dev(
    port: Annotated[int, typer.Option(help="NATS port (0: any free port)")] = 4222,
    store: Annotated[Path, typer.Option(help="JetStream data directory")] = Path(".immortal-dev"),
    example: Annotated[bool, typer.Option(help="start one example run")] = True,
    secure: Annotated[
        bool,
        typer.Option(
            help="with auth on: a local issuer, a CA and certificates, the auth service, "
            "tokens for the hub, the worker, a reader and a writer (store: .immortal-dev-secure)"
        ),
    ] = False,
    log_level: str = "WARNING",
) -> None:
    """Start nats-server, a hub and a worker with the bundled example, then run it once."""
    setup_logging(log_level)
    if secure:
        from immortal_hub.auth.dev import run_secure_dev

        if store == Path(".immortal-dev"):  # the accounts differ: keep the data apart
            store = Path(".immortal-dev-secure")
        asyncio.run(run_secure_dev(port if port else -1, store.resolve(), example))
        return
    asyncio.run(_dev(port if port else -1, store.resolve(), example))


async def _dev(port: int, store: Path, example: bool) -> None:
    from immortal.testing import NatsServer
    from immortal_hub._hub import Hub

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
            await _run_example(url)
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
        await until_signalled()
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await worker.wait()
        await h.stop()
        await server.stop()
        print("stopped", flush=True)


async def _run_example(url: str) -> None:
    from immortal import Client
    from immortal.examples.orders import Order, place_order

    async with Client(url) as client:
        async with asyncio.timeout(30):  # the run would wait durably; show it run now
            while not await client.workers("default"):  # noqa: ASYNC110 (a KV poll)
                await asyncio.sleep(0.1)
        handle = await client.start(
            place_order, Order(id="first-order", items=["book", "lamp"], cents=4200)
        )
        result = await handle.result(timeout=60)
        print(f"example run  {handle.workflow_id} -> {result.model_dump_json()}", flush=True)
