"""``immortal-worker``: serve workflows and activities from ``module:attribute`` references.

    immortal-worker app.orders:place_order app.orders:charge --queue orders

A reference may name a decorated function, a list of them, or a module (every decorated
function in it is served).

    immortal-worker replay order-42.json --workflow app.orders:place_order

replays recorded histories against the code (no server): exit 0 if they replay cleanly,
1 with the first divergence printed, 2 if a history cannot be replayed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from immortal._definitions import activity_definition, workflow_definition
from immortal._errors import ImmortalError, NotSetUpError, ServerUnreachableError
from immortal.codec import AesGcmCodec, KeyRing, PayloadCodec, codec_from_env
from immortal.security import AuthError, ConnectSecurity
from immortal.security.tls import quiet_tls_eof_warning
from immortal_worker._worker import Worker
from immortal_worker.replay import replay_file

__all__ = ["load_targets", "main"]

app = typer.Typer(add_completion=False, help=__doc__)
replay_app = typer.Typer(add_completion=False)


def _is(kind: str, obj: Any) -> bool:
    try:
        (workflow_definition if kind == "wf" else activity_definition)(obj)
        return True
    except TypeError:
        return False


def load_targets(refs: list[str]) -> tuple[list[Any], list[Any]]:
    """Resolve ``module:attribute`` references into (workflows, activities)."""
    workflows: list[Any] = []
    activities: list[Any] = []
    for ref in refs:
        module_name, _, attr = ref.partition(":")
        if not module_name:
            raise typer.BadParameter(f"{ref!r} is not a module:attribute reference")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
        if attr:
            try:
                obj = getattr(module, attr)
            except AttributeError as exc:
                raise typer.BadParameter(f"{module_name!r} has no attribute {attr!r}") from exc
        else:
            obj = module
        items = vars(obj).values() if isinstance(obj, ModuleType) else obj
        items = (
            items if isinstance(items, (list, tuple, set)) or isinstance(obj, ModuleType) else [obj]
        )
        found = 0
        for item in items:
            if _is("wf", item) and item not in workflows:
                workflows.append(item)
                found += 1
            elif _is("act", item) and item not in activities:
                activities.append(item)
                found += 1
        if not found:
            raise typer.BadParameter(f"{ref!r} holds no @workflow or @activity function")
    return workflows, activities


CodecKeys = Annotated[
    str | None,
    typer.Option(
        "--codec-keys",
        envvar="IMMORTAL_CODEC_KEYS_FILE",
        help="key ring file: encrypt payloads (or $IMMORTAL_CODEC_KEYS)",
    ),
]


def _codec(path: str | None) -> PayloadCodec | None:
    return AesGcmCodec(KeyRing.from_file(path)) if path else codec_from_env()


@app.command()
def serve(
    targets: Annotated[list[str], typer.Argument(help="module:attribute references")],
    server: Annotated[
        str,
        typer.Option(
            "--server",
            "-s",
            envvar="IMMORTAL_SERVER",
            help="NATS URL; a cluster's, comma-separated",
        ),
    ] = "nats://127.0.0.1:4222",
    queue: Annotated[list[str], typer.Option("--queue", "-q", help="queues to serve")] = [  # noqa: B006
        "default"
    ],
    tenant: Annotated[
        str | None,
        typer.Option(envvar="IMMORTAL_TENANT", help="default: the token's, or 'default'"),
    ] = None,
    prefix: Annotated[str, typer.Option(envvar="IMMORTAL_PREFIX")] = "imm",
    token: Annotated[str | None, typer.Option(help="bearer token (or $IMMORTAL_TOKEN)")] = None,
    token_command: Annotated[
        str | None, typer.Option(help="command printing a token, run at each reconnect")
    ] = None,
    tls_ca: Annotated[
        str | None, typer.Option(help="CA of the server (or $IMMORTAL_TLS_CA)")
    ] = None,
    tls_cert: Annotated[str | None, typer.Option(help="client certificate (mTLS)")] = None,
    tls_key: Annotated[str | None, typer.Option(help="its key")] = None,
    lease: Annotated[
        float | None,
        typer.Option(
            help="seconds a task stays this worker's once it falls silent (default: the "
            "queue's lease, 30 s for a new queue; no longer than the queue's)"
        ),
    ] = None,
    workflow_slots: int = 256,
    activity_slots: int = 64,
    worker_id: Annotated[str | None, typer.Option("--id")] = None,
    grace: Annotated[
        float, typer.Option(help="seconds in-flight tasks get to finish on SIGTERM")
    ] = 10.0,
    release_after: Annotated[
        float, typer.Option(help="drop a run from memory when it sleeps at least this long")
    ] = 30.0,
    codec_keys: CodecKeys = None,
    log_level: str = "INFO",
) -> None:
    """Serve workflows and activities until SIGINT or SIGTERM.

    `immortal-worker replay HISTORY.json --workflow module:attr` replays recorded histories
    against workflow code instead (see `immortal-worker replay --help`).
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_tls_eof_warning()
    workflows, activities = load_targets(targets)
    security = ConnectSecurity.from_env(
        token=token, token_command=token_command, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
    )
    worker = Worker(
        server,
        queues=queue,
        workflows=workflows,
        activities=activities,
        tenant=tenant,
        prefix=prefix,
        lease=lease,
        workflow_slots=workflow_slots,
        activity_slots=activity_slots,
        worker_id=worker_id,
        release_after=release_after,
        security=security if security.token or security.tls.configured else None,
        codec=_codec(codec_keys),
    )
    try:
        asyncio.run(_serve(worker, grace))
    except ImmortalError as exc:  # a refused start (a lease the queue cannot honour, a token)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


async def _serve(worker: Worker, grace: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A signal may come while the worker still waits for NATS or for a hub: starting is
    # then abandoned, not waited for.
    starting = asyncio.ensure_future(worker.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done() and not worker.taking_work:
        starting.cancel()  # it took nothing yet; start() closes what it opened
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return
    stopping.cancel()
    await starting  # past the waits it takes a moment more; a failed start raises here
    print(f"worker {worker.worker_id} ready", flush=True)
    await stop.wait()
    await worker.stop(grace=grace)
    # Idle pool threads end as soon as they see the executor shut down; only a thread still
    # inside activity code outlives a short join.
    stuck = [t for t in threading.enumerate() if t.name.startswith("activity")]
    until = time.monotonic() + 0.5
    for thread in stuck:
        thread.join(timeout=max(0.0, until - time.monotonic()))
    stuck = [t for t in stuck if t.is_alive()]
    if stuck:
        # Their tasks were handed back; a thread cannot be stopped, so leave without it
        # (interpreter exit would join it and wait for the code to return on its own).
        logging.getLogger(__name__).warning(
            "leaving %d sync activity thread(s) still running; their tasks were handed back",
            len(stuck),
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@replay_app.command()
def replay(
    histories: Annotated[
        list[Path], typer.Argument(help="JSON exports (immortal workflow history ID --json)")
    ],
    workflow: Annotated[
        list[str],
        typer.Option("--workflow", "-w", help="module:attribute holding the workflow code"),
    ],
    codec_keys: CodecKeys = None,
) -> None:
    """Replay recorded histories against workflow code, no server needed: exit 0 if every
    one replays cleanly, 1 (printing the first divergence of each) if any diverges, 2 if
    one cannot be replayed at all (unreadable, or of a workflow type not given)."""
    workflows, activities = load_targets(workflow)
    if not workflows:
        raise typer.BadParameter(f"{', '.join(workflow)} holds no @workflow function")
    codec = _codec(codec_keys)
    worst = 0
    for path in histories:
        try:
            result = replay_file(path, workflows, activities=activities, codec=codec)
        except Exception as exc:  # unreadable, malformed, or not this code's workflow type
            print(f"{path}: cannot replay: {type(exc).__name__}: {exc}", file=sys.stderr)
            worst = 2
            continue
        if result.divergence is None:
            print(f"{path}: ok ({result.workflow_type}, {result.events} events)")
        else:
            print(f"{path}: DIVERGES at event {result.divergence.event_id}")
            print(f"    {result.divergence.message}")
            worst = max(worst, 1)
    raise typer.Exit(worst)


def main() -> None:
    sys.path.insert(0, "")  # let `module:attr` find modules in the working directory
    try:
        if sys.argv[1:2] == ["replay"]:
            replay_app(args=sys.argv[2:], prog_name="immortal-worker replay")
        else:
            app()
    except ImmortalError as exc:  # as `immortal` reports them: one line, exit 2 or 1
        if os.environ.get("IMMORTAL_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        could_not_run = (NotSetUpError, ServerUnreachableError, AuthError)
        sys.exit(2 if isinstance(exc, could_not_run) else 1)
