"""``immortal``: run a hub, a whole dev stack, and talk to workflows.

immortal dev                        # nats-server + hub + worker + an example run
immortal hub --server nats://...    # one hub
immortal hub --server nats://a:4222,nats://b:4222,nats://c:4222 --replicas 3   # on a cluster
immortal hub --tenant-limit '*=in_flight:200' --tenant-limit acme=in_flight:20,rate:100
immortal workflow start place_order '{"id": "o2", "items": ["x"], "cents": 100}'
immortal workflow result <workflow-id>
immortal workflow list --status running --type place_order --since 1h
immortal workflow signal <workflow-id> approve '"yes"'
immortal schedule create nightly report --cron "0 3 * * *"

One module per command group; each imports the SDK, and the hub's machinery, only inside
the commands that need them, so a read command starts without loading the hub.
"""

from __future__ import annotations

import typer

from immortal_hub.cli import dev, dlq, hub, logs, ops, replay, runs, schedule, workflow

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, help="Immortal: durable workflows on NATS JetStream.")
app.command()(hub.hub)
app.command()(dev.dev)
app.command()(ops.queues)
app.command()(ops.workers)
app.command()(logs.events)
app.command()(logs.logs)
app.command()(ops.retention)
app.command()(replay.replay)
workflow.app.command("list")(runs.workflow_list)
workflow.app.command("runs")(runs.workflow_runs)
app.add_typer(workflow.app, name="workflow")
app.add_typer(dlq.app, name="dlq")
app.add_typer(schedule.app, name="schedule")


def main() -> None:
    app()
