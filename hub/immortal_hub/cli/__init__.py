"""``immortal``: run a hub, a whole dev stack, and talk to workflows.

immortal dev                        # nats-server + hub + worker + an example run
immortal hub --server nats://...    # one hub
immortal hub --server nats://a:4222,nats://b:4222,nats://c:4222 --replicas 3   # on a cluster
immortal hub --tenant-limit '*=in_flight:200' --tenant-limit acme=in_flight:20,rate:100
immortal workflow start place_order '{"id": "o2", "items": ["x"], "cents": 100}'
immortal workflow result <workflow-id>
immortal workflow signal <workflow-id> approve '"yes"'
immortal schedule create nightly report --cron "0 3 * * *"
immortal dev --secure               # the same with auth on: issuer, CA, auth service, tokens
immortal --token "$(cat writer.jwt)" --tls-ca ca.pem workflow start ...   # auth on
immortal auth keygen | serve        # the NATS auth callout service
immortal codec keygen k1 > keys.json  # encrypted payloads; --codec-keys keys.json to read
immortal codec serve --ring acme=keys.json   # POST /decode for the web UI, tokens verified
immortal policy apply policy.yaml   # the tenant's policy (admin); show, test, explain
immortal audit --follow --decision deny   # the decision log, live
immortal keys new|add|list|retire   # signing keys of the tenant (admin)

One module per command group; each imports the SDK, and the hub's machinery, only inside
the commands that need them, so a read command starts without loading the hub.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from immortal_hub.cli import (
    audit,
    auth,
    codec,
    dev,
    dlq,
    hub,
    keys,
    logs,
    ops,
    policy,
    replay,
    runs,
    schedule,
    workflow,
)
from immortal_hub.cli._common import CONNECT
from immortal_hub.cli._exit import report

__all__ = ["app", "main"]

HELP = (
    "Immortal: durable workflows on NATS JetStream. Exit codes: 0 done, 1 failed (the run "
    "failed, not found, closed, too large), 2 could not run (usage, NATS unreachable, no hub "
    "has set the server up)."
)
# In the order `immortal --help` lists them.
COMMANDS: dict[str, Callable[..., Any]] = {
    "hub": hub.hub,
    "dev": dev.dev,
    "queues": ops.queues,
    "workers": ops.workers,
    "events": logs.events,
    "logs": logs.logs,
    "retention": ops.retention,
    "audit": audit.audit,
    "replay": replay.replay,
}
workflow.app.command("list")(runs.workflow_list)  # finding runs, in a module of its own
workflow.app.command("runs")(runs.workflow_runs)
GROUPS: dict[str, typer.Typer] = {
    "workflow": workflow.app,
    "dlq": dlq.app,
    "schedule": schedule.app,
    "auth": auth.app,
    "codec": codec.app,
    "policy": policy.app,
    "keys": keys.app,
}


def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="IMMORTAL_DEBUG", help="tracebacks with errors (any position)"
        ),
    ] = False,
    token: Annotated[str | None, typer.Option(help="bearer token (or $IMMORTAL_TOKEN)")] = None,
    token_command: Annotated[
        str | None,
        typer.Option(
            help="command printing a token, run at each connect ($IMMORTAL_TOKEN_COMMAND)"
        ),
    ] = None,
    tls_ca: Annotated[str | None, typer.Option(help="CA of the server ($IMMORTAL_TLS_CA)")] = None,
    tls_cert: Annotated[
        str | None, typer.Option(help="client certificate, mTLS ($IMMORTAL_TLS_CERT)")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="its key ($IMMORTAL_TLS_KEY)")] = None,
    codec_keys: Annotated[
        str | None,
        typer.Option(
            "--codec-keys",
            envvar="IMMORTAL_CODEC_KEYS_FILE",
            help="key ring file: seal the payloads sent, open those read (any position)",
        ),
    ] = None,
) -> None:
    # Auth on: what every command connects with (read by _common.connect_security).
    CONNECT.update(
        token=token, token_command=token_command, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
    )
    CONNECT["codec_keys"] = codec_keys


def _build(names: list[str]) -> typer.Typer:
    built = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,  # a bug's traceback as text; a user's error in one line
        help=HELP,
    )
    built.callback()(_options)
    for name in names:
        if name in COMMANDS:
            built.command(name)(COMMANDS[name])
        else:
            built.add_typer(GROUPS[name], name=name)
    return built


app = _build([*COMMANDS, *GROUPS])


def _hoisted(args: list[str], option: str) -> list[str]:
    """``args`` with ``option VALUE`` (or ``option=VALUE``) moved before the command, so the
    app's option is taken after the command too."""
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return [arg, args[i + 1], *args[:i], *args[i + 2 :]]
        if arg.startswith(option + "="):
            return [arg, *args[:i], *args[i + 1 :]]
    return args


def main() -> None:
    """The ``immortal`` command: errors a user can act on as one line, with exit codes."""
    args = sys.argv[1:]
    debug = "--debug" in args or os.environ.get("IMMORTAL_DEBUG", "") not in ("", "0")
    if "--debug" in args:  # taken anywhere, after the command too
        args = ["--debug", *(a for a in args if a != "--debug")]
    args = _hoisted(args, "--codec-keys")
    # typer reads the signature of every command it knows when it builds its tree: give it
    # only the one the command line names (all of them for `immortal --help` or a typo).
    named = next((a for a in args if not a.startswith("-")), None)
    only = _build([named]) if named in COMMANDS or named in GROUPS else app
    try:
        only(args=args, prog_name="immortal")
    except BrokenPipeError:  # `immortal events | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        sys.exit(report(exc, debug=debug))
