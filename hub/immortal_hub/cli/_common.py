"""What the commands share: the connection options, connecting, and printing values.

Only light imports at module level: every command pays for what this module imports, and
a read command should start fast (the SDK and nats-py are imported when a command runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from immortal import Client, WorkflowHandle
    from immortal.codec import PayloadCodec
    from immortal.security import ConnectSecurity

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SERVER",
    "EVENT_HEADER",
    "ConnectTimeout",
    "InputFiles",
    "Prefix",
    "RunId",
    "Server",
    "Tenant",
    "closing",
    "connect_codec",
    "duration_text",
    "event_line",
    "inputs",
    "json_args",
    "on_run",
    "parse_duration",
    "print_json",
    "print_result",
    "readable",
    "reveal",
    "setup_logging",
    "until_signalled",
    "with_client",
]

# Set by the app's callback (``immortal --token ... --tls-ca ... <command>``); each falls
# back to its environment variable ($IMMORTAL_TOKEN, $IMMORTAL_TOKEN_COMMAND,
# $IMMORTAL_TLS_CA, $IMMORTAL_TLS_CERT, $IMMORTAL_TLS_KEY).
CONNECT: dict[str, str | None] = {}

Server = Annotated[
    str,
    typer.Option(
        "--server", "-s", envvar="IMMORTAL_SERVER", help="NATS URL; a cluster's, comma-separated"
    ),
]
Tenant = Annotated[str, typer.Option(envvar="IMMORTAL_TENANT")]
Prefix = Annotated[str, typer.Option(envvar="IMMORTAL_PREFIX")]
RunId = Annotated[str | None, typer.Option("--run", help="run id (default: newest)")]
ConnectTimeout = Annotated[
    float,
    typer.Option(
        envvar="IMMORTAL_CONNECT_TIMEOUT", help="seconds to wait for NATS before giving up (exit 2)"
    ),
]
InputFiles = Annotated[
    list[str] | None,
    typer.Option(
        "--input-file",
        "-i",
        help="a file holding one argument as JSON ('-': standard input); repeatable, in order",
    ),
]
DEFAULT_SERVER = "nats://127.0.0.1:4222"
DEFAULT_CONNECT_TIMEOUT = 3.0
T = TypeVar("T")


def setup_logging(level: str) -> None:
    from immortal.security.tls import quiet_tls_eof_warning

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_tls_eof_warning()


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def connect_security() -> ConnectSecurity | None:
    """The token, TLS and signing key this command connects with (None: none is set)."""
    from immortal.security import ConnectSecurity

    security = ConnectSecurity.from_env(
        token=CONNECT.get("token"),
        token_command=CONNECT.get("token_command"),
        tls_ca=CONNECT.get("tls_ca"),
        tls_cert=CONNECT.get("tls_cert"),
        tls_key=CONNECT.get("tls_key"),
    )
    configured = security.token is not None or security.tls.configured or security.signer
    return security if configured else None


def connect_codec() -> PayloadCodec | None:
    """The payload codec over the key ring of ``--codec-keys`` (else of the environment:
    $IMMORTAL_CODEC_KEYS_FILE or $IMMORTAL_CODEC_KEYS); None without a ring."""
    from immortal.codec import AesGcmCodec, KeyRing, codec_from_env

    path = CONNECT.get("codec_keys")
    return AesGcmCodec(KeyRing.from_file(path)) if path else codec_from_env()


def reveal(handle: WorkflowHandle[Any], events: list[Any], seqs: dict[int, int]) -> list[Any]:
    """The run's events with their sealed payloads opened, or saying why not, per field."""
    from immortal.codec import reveal_events

    client = handle.client
    ids = (client.tenant, handle.workflow_id, handle.run_id)
    return reveal_events(events, client.codec, *ids, seqs=seqs)


def with_client(
    server: str,
    tenant: str,
    prefix: str,
    connect_timeout: float,
    action: Callable[[Client], Awaitable[None]],
) -> None:
    """Connect as the tenant (giving up after ``connect_timeout`` seconds), check that a hub
    has set the server up, run ``action``, disconnect. With a token the tenant is the
    token's (``--tenant`` may only repeat it)."""
    from immortal import Client
    from immortal.security.tls import quiet_tls_eof_warning

    security = connect_security()
    asked = None if security and security.token and tenant == "default" else tenant

    async def go() -> None:
        client = Client(
            server,
            tenant=asked,
            prefix=prefix,
            connect_timeout=connect_timeout,
            security=security,
            codec=connect_codec(),
        )
        async with client:
            await client.check_set_up()
            await action(client)

    quiet_tls_eof_warning()
    asyncio.run(go())  # a refusal (AuthError) is reported by main() as one line, exit 2


def on_run(
    server: str,
    tenant: str,
    prefix: str,
    connect_timeout: float,
    workflow_id: str,
    run: str | None,
    action: Callable[[WorkflowHandle[Any]], Awaitable[None]],
) -> None:
    """Connect, find the run (the newest of the workflow id unless given), act on it."""

    async def act(client: Client) -> None:
        await action(await client.get_handle(workflow_id, run))

    with_client(server, tenant, prefix, connect_timeout, act)


@contextlib.asynccontextmanager
async def closing(items: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator when the block ends, so its subscription ends with the
    command rather than after the connection is gone."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def json_args(args: list[str]) -> list[Any]:
    out = []
    for a in args:
        try:
            out.append(json.loads(a))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"argument {a!r} is not JSON: {exc}") from exc
    return out


def inputs(args: list[str] | None, files: list[str] | None) -> list[Any]:
    """The arguments: JSON values on the command line, or one per ``--input-file``."""
    if args and files:
        raise typer.BadParameter("give the arguments on the command line or in files, not both")
    if not files:
        return json_args(args or [])
    if files.count("-") > 1:
        raise typer.BadParameter("standard input can be read once", param_hint="--input-file")
    out = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {name}: {exc.strerror}") from exc
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as exc:
            where = "standard input" if name == "-" else name
            raise typer.BadParameter(f"{where} is not JSON: {exc}") from exc
    return out


def print_json(value: Any) -> None:
    from immortal._codec import to_wire

    print(json.dumps(to_wire(value), indent=2, default=str))


async def print_result(handle: WorkflowHandle[Any], timeout: float | None = None) -> None:
    from immortal import ImmortalError, WorkflowFailedError

    try:
        print_json(await handle.result(timeout=timeout))
    except WorkflowFailedError as exc:
        print(f"failed: {exc.cause}", file=sys.stderr)
        raise typer.Exit(1) from exc
    except TimeoutError as exc:
        if timeout is None:  # a request's own timeout, not ours
            raise
        raise ImmortalError(
            f"run {handle.run_id} of {handle.workflow_id!r} is still open after {timeout:g} s"
        ) from exc


EVENT_HEADER = f"{'seq':>7} {'workflow':<12} {'id':>4} {'event':<24} attributes"


def event_line(seq: int, workflow_id: str, e: Any, as_json: bool, run_id: str | None = None) -> str:
    """One event a line: stream sequence, workflow id, event id, type, attributes; as JSON,
    the event as ``history --json`` writes it (payload bytes as ``$bytes``)."""
    if as_json:
        from immortal._timeline import event_to_json

        line = {"seq": seq, "workflow_id": workflow_id, "run_id": run_id}
        return json.dumps({**line, "event": event_to_json(e)}, ensure_ascii=False)
    attrs = json.dumps({k: readable(v) for k, v in e.attrs.items()}, default=str)
    return f"{seq:>7} {workflow_id:<12} {e.id:>4} {e.type.value:<24} {attrs}"


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h`` or ``7d``."""
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = text[len(number) :].strip() or "s"
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError) as exc:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 90s, 15m, 12h, 7d)") from exc
    if value <= 0:
        raise typer.BadParameter(f"{text!r}: a duration must be positive")
    return value


def duration_text(seconds: float) -> str:
    """``604800`` as ``7 d``, ``5400`` as ``90 min``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def readable(value: Any) -> Any:
    """Payloads are msgpack bytes on the wire; show them decoded."""
    from immortal._codec import to_wire, unpack
    from immortal._errors import PayloadError

    if isinstance(value, bytes):
        try:
            return to_wire(unpack(value))
        except PayloadError:
            return f"<{len(value)} bytes>"
    return value
