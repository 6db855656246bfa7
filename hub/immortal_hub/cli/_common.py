"""What the commands share: the connection options, connecting, and printing values.

Only light imports at module level: every command pays for what this module imports, and
a read command should start fast (the SDK and nats-py are imported when a command runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from immortal import Client, WorkflowHandle
    from immortal.security import ConnectSecurity

__all__ = [
    "DEFAULT_SERVER",
    "Prefix",
    "RunId",
    "Server",
    "Tenant",
    "event_line",
    "json_args",
    "on_run",
    "print_json",
    "print_result",
    "readable",
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
DEFAULT_SERVER = "nats://127.0.0.1:4222"


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
    """The token and TLS this command connects with (None: neither is set)."""
    from immortal.security import ConnectSecurity

    security = ConnectSecurity.from_env(
        token=CONNECT.get("token"),
        token_command=CONNECT.get("token_command"),
        tls_ca=CONNECT.get("tls_ca"),
        tls_cert=CONNECT.get("tls_cert"),
        tls_key=CONNECT.get("tls_key"),
    )
    return security if security.token is not None or security.tls.configured else None


def with_client(
    server: str, tenant: str, prefix: str, action: Callable[[Client], Awaitable[None]]
) -> None:
    """Connect as the tenant, run ``action``, disconnect. With a token, the tenant is the
    token's (``--tenant`` may only repeat it); a refusal is one line and exit status 2."""
    from immortal import Client
    from immortal.security import AuthError

    security = connect_security()
    asked = None if security and security.token and tenant == "default" else tenant

    async def go() -> None:
        async with Client(server, tenant=asked, prefix=prefix, security=security) as client:
            await action(client)

    from immortal.security.tls import quiet_tls_eof_warning

    quiet_tls_eof_warning()
    try:
        asyncio.run(go())
    except AuthError as exc:
        print(f"immortal: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


def on_run(
    server: str,
    tenant: str,
    prefix: str,
    workflow_id: str,
    run: str | None,
    action: Callable[[WorkflowHandle[Any]], Awaitable[None]],
) -> None:
    """Connect, find the run (the newest of the workflow id unless given), act on it."""

    async def act(client: Client) -> None:
        await action(await client.get_handle(workflow_id, run))

    with_client(server, tenant, prefix, act)


def json_args(args: list[str]) -> list[Any]:
    out = []
    for a in args:
        try:
            out.append(json.loads(a))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"argument {a!r} is not JSON: {exc}") from exc
    return out


def print_json(value: Any) -> None:
    from immortal._codec import to_wire

    print(json.dumps(to_wire(value), indent=2, default=str))


async def print_result(handle: WorkflowHandle[Any], timeout: float | None = None) -> None:
    from immortal import WorkflowFailedError

    try:
        print_json(await handle.result(timeout=timeout))
    except WorkflowFailedError as exc:
        print(f"failed: {exc.cause}", file=sys.stderr)
        raise typer.Exit(1) from exc


def event_line(seq: int, workflow_id: str, e: Any, as_json: bool, run_id: str | None = None) -> str:
    if as_json:
        line = {"seq": seq, "workflow_id": workflow_id, "run_id": run_id}
        return json.dumps({**line, "event": e.model_dump(mode="json")})
    attrs = json.dumps({k: readable(v) for k, v in e.attrs.items()}, default=str)
    return f"{seq:>7} {workflow_id} {e.id:>4} {e.type.value:<24} {attrs}"


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
