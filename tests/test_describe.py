"""``describe``: what a run waits for, its pending activities and timers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import immortal
from immortal import Client, PendingActivity, RunDescription, WorkflowContext
from tests.helpers import running_worker

# A first retry at once, the next one after a minute: the second attempt's failure is the
# last failure while the run waits for the third.
SLOW_RETRY = immortal.RetryPolicy(
    initial_interval=0.05, backoff_coefficient=1200, maximum_interval=600, jitter=0
)


@immortal.activity(retry=SLOW_RETRY)
async def flaky(tag: str) -> str:
    raise RuntimeError(f"{tag} failed on attempt {immortal.activity.info().attempt}")


@immortal.activity(heartbeat_timeout=9)
async def beats_until_gate(tag: str) -> str:
    gate = Path(os.environ["IMMORTAL_TEST_DIR"]) / f"gate-{tag}"
    while not gate.exists():
        immortal.activity.heartbeat()
        await asyncio.sleep(0.1)
    return tag


@immortal.workflow
async def waits_on_everything(ctx: WorkflowContext, tag: str) -> int:
    await asyncio.gather(
        ctx.activity(flaky, tag),
        ctx.activity(beats_until_gate, tag),
        ctx.activity("nobody_serves_this", tag, queue="nowhere"),
        ctx.sleep(120),
    )
    return 0


async def _waiting(client: Client, handle: immortal.WorkflowHandle) -> RunDescription:  # type: ignore[type-arg]
    """Until the flaky activity waits for its third attempt and the other has heartbeated."""
    async with asyncio.timeout(30):
        while True:
            desc = await handle.describe()
            acts = {a.name: a for a in desc.pending_activities}
            flaky_act, beating = acts.get("flaky"), acts.get("beats_until_gate")
            if (
                flaky_act is not None
                and flaky_act.attempt == 3
                and beating is not None
                and beating.heartbeat_age is not None
            ):
                return desc
            await asyncio.sleep(0.1)


async def test_describe_shows_pending_activities_and_timers(
    nats_url: str, prefix: str, client: Client, test_dir: Path
) -> None:
    async with running_worker(
        nats_url,
        prefix,
        workflows=[waits_on_everything],
        activities=[flaky, beats_until_gate],
        worker_id="describer",
    ):
        started = time.time()
        handle = await client.start(waits_on_everything, "t1", run_timeout=600)
        desc = await _waiting(client, handle)
        acts: dict[str, PendingActivity] = {a.name: a for a in desc.pending_activities}
        assert len(acts) == 3

        retrying = acts["flaky"]
        assert retrying.state == "backoff" and retrying.attempt == 3
        assert retrying.last_failure == "RuntimeError: t1 failed on attempt 2"
        assert retrying.worker == "describer"  # who ran the attempt that failed
        assert retrying.retry_at is not None and retrying.retry_at.timestamp() > time.time() + 30

        running = acts["beats_until_gate"]
        assert (running.state, running.attempt, running.worker) == ("running", 1, "describer")
        assert running.last_failure is None and running.heartbeat_age is not None
        assert 0 <= running.heartbeat_age < 15

        unserved = acts["nobody_serves_this"]
        assert (unserved.state, unserved.queue, unserved.worker) == ("scheduled", "nowhere", None)
        assert unserved.heartbeat_age is None and unserved.last_failure is None

        assert [t.kind for t in desc.pending_timers] == ["timer", "run_timeout"]
        sleep, deadline = desc.pending_timers
        assert sleep.timer_id is not None and abs(sleep.due_at.timestamp() - started - 120) < 10
        assert abs(deadline.due_at.timestamp() - started - 600) < 10

        text = await asyncio.to_thread(_cli, nats_url, prefix, "describe", handle.workflow_id)
        assert text.returncode == 0, text.stderr
        out = text.stdout
        assert "flaky (queue default) attempt 3, next attempt in " in out
        assert "last on describer, last failure: RuntimeError: t1 failed on attempt 2" in out
        assert "beats_until_gate (queue default) attempt 1, running, on describer" in out
        assert "nobody_serves_this (queue nowhere) attempt 1, scheduled" in out
        assert f"#{sleep.timer_id} timer due " in out and "run_timeout due " in out
        dumped = await asyncio.to_thread(
            _cli, nats_url, prefix, "describe", handle.workflow_id, "--json"
        )
        body = json.loads(dumped.stdout)
        assert [a["name"] for a in body["pending_activities"]] == [
            a.name for a in desc.pending_activities
        ]
        assert body["pending_timers"][1]["kind"] == "run_timeout"

        (test_dir / "gate-t1").touch()  # the heartbeating one completes: no longer pending
        async with asyncio.timeout(20):
            while any(
                a.name == "beats_until_gate" for a in (await handle.describe()).pending_activities
            ):
                await asyncio.sleep(0.1)
        await handle.terminate("done looking")
        closed = await handle.describe()
    assert closed.pending_activities == [] and closed.pending_timers == []


def _cli(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", "workflow", *args, "-s", url, "--prefix", prefix],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
