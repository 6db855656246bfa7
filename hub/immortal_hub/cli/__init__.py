"""``immortal``: run a hub, a whole dev stack, and talk to workflows.

immortal dev                        # nats-server + hub + worker + an example run
immortal hub --server nats://...    # one hub
immortal hub --server nats://a:4222,nats://b:4222,nats://c:4222 --replicas 3   # on a cluster
immortal hub --tenant-limit '*=in_flight:200' --tenant-limit acme=in_flight:20,rate:100
immortal workflow start place_order '{"id": "o2", "items": ["x"], "cents": 100}'
immortal workflow result <workflow-id>
immortal workflow signal <workflow-id> approve '"yes"'
immortal schedule create nightly report --cron "0 3 * * *"

One module per command group; each imports the SDK, and the hub's machinery, only inside
the commands that need them, so a read command starts without loading the hub.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from immortal_hub.cli import dev, dlq, hub, logs, ops, replay, schedule, workflow
from immortal_hub.cli._exit import report

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,  # a bug's traceback in plain text; a user's error in one line
    help="Immortal: durable workflows on NATS JetStream. Exit codes: 0 done, 1 failed (the "
    "run failed, not found, closed, too large), 2 could not run (usage, NATS unreachable, no "
    "hub has set the server up).",
)


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="IMMORTAL_DEBUG", help="tracebacks with errors (any position)"
        ),
    ] = False,
) -> None:
    """Immortal: durable workflows on NATS JetStream."""


app.command()(hub.hub)
app.command()(dev.dev)
app.command()(ops.queues)
app.command()(ops.workers)
app.command()(logs.events)
app.command()(logs.logs)
app.command()(ops.retention)
app.command()(replay.replay)
app.add_typer(workflow.app, name="workflow")
app.add_typer(dlq.app, name="dlq")
app.add_typer(schedule.app, name="schedule")


def main() -> None:
    """The ``immortal`` command: errors a user can act on as one line, with exit codes."""
    args = sys.argv[1:]
    debug = "--debug" in args or os.environ.get("IMMORTAL_DEBUG", "") not in ("", "0")
    if "--debug" in args:  # taken anywhere, after the command too
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        app(args=args)
    except BrokenPipeError:  # `immortal events | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        sys.exit(report(exc, debug=debug))
