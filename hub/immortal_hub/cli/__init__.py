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

One module per command group; each imports the SDK, and the hub's machinery, only inside
the commands that need them, so a read command starts without loading the hub.
"""

from __future__ import annotations

from typing import Annotated

import typer

from immortal_hub.cli import auth, dev, dlq, hub, logs, ops, replay, schedule, workflow
from immortal_hub.cli._common import CONNECT

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, help="Immortal: durable workflows on NATS JetStream.")


@app.callback()
def connection(
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
) -> None:
    """Options every command connects with (auth on: a token; TLS)."""
    CONNECT.update(
        token=token, token_command=token_command, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
    )


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
app.add_typer(auth.app, name="auth")


def main() -> None:
    app()
