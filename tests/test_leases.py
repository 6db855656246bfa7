"""Leases: a frozen worker starts nothing that already counts as lost, and one worker's
lease never changes another's."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import immortal
from immortal import Client, EventType, LeaseMismatchError, WorkflowContext
from immortal._codec import encode_args
from immortal._wire import ActivityTask, encode
from immortal_worker import Worker
from tests.helpers import assert_well_formed, running_worker, wait_for_history
from tests.procs import ROOT, start_worker
from tests.workflows import timed_flow, timed_work


def _attempts_run(test_dir: Path, tag: str) -> list[str]:
    return sorted(p.name for p in test_dir.glob(f"ran-{tag}-*"))


async def test_a_frozen_worker_starts_no_attempt_after_its_own_was_given_away(
    nats_url: str, prefix: str, client: Client, test_dir: Path
) -> None:
    # SIGSTOP 1 s into a 6 s attempt, another worker takes over, SIGCONT 5 s later. A pull
    # request the frozen worker left open used to receive the next attempt (published once
    # the first counted as lost), which it then ran when it thawed: a third run.
    frozen = await start_worker(nats_url, test_dir, prefix=prefix, lease=3, worker_id="frozen")
    other = None
    try:
        handle = await client.start(timed_flow, "ice", 6.0)
        async with asyncio.timeout(20):
            while not _attempts_run(test_dir, "ice"):
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        frozen.proc.send_signal(signal.SIGSTOP)
        stopped = asyncio.get_running_loop().time()
        other = await start_worker(nats_url, test_dir, prefix=prefix, lease=3, worker_id="other")
        await asyncio.sleep(5.0 - (asyncio.get_running_loop().time() - stopped))
        frozen.proc.send_signal(signal.SIGCONT)
        assert await handle.result(timeout=30) == f"ice by {other.pid}"
        await asyncio.sleep(2.0)  # the thawed worker finishes its own attempt, late
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        await frozen.stop()
        if other is not None:
            await other.stop()
    # Its own first attempt, which was running when it froze; then one retry elsewhere.
    assert _attempts_run(test_dir, "ice") == [
        f"ran-ice-{frozen.pid}-1",
        f"ran-ice-{other.pid}-2",
    ]
    history = await handle.history()
    assert_well_formed(history)
    lost = [e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED]
    assert [e.attrs["failure"]["type"] for e in lost] == ["WorkerLost"]
    ignored = [e for e in history if e.type is EventType.ACTIVITY_RESULT_IGNORED]
    assert [e.attrs["worker"] for e in ignored] == ["frozen"]  # its late result changes nothing


async def test_no_task_reaches_a_worker_frozen_past_its_liveness_key(
    nats_url: str, prefix: str, client: Client, test_dir: Path
) -> None:
    # Frozen right after it asked the server for tasks: that pull request must expire before
    # the worker's liveness key does, or a task published once the worker is known dead goes
    # to the frozen worker (the oldest waiting request) and waits out a lease there, or
    # runs, late, when the worker thaws.
    frozen = await start_worker(nats_url, test_dir, prefix=prefix, lease=30, worker_id="frozen")
    frozen.proc.send_signal(signal.SIGSTOP)
    other = None
    try:
        async with asyncio.timeout(20):  # its key expires: hubs and clients see it gone
            while "frozen" in [w.worker for w in await client.workers()]:
                await asyncio.sleep(0.1)
        other = await start_worker(nats_url, test_dir, prefix=prefix, lease=30, worker_id="other")
        handle = await client.start(timed_flow, "fresh", 0.1)
        assert await handle.result(timeout=20) == f"fresh by {other.pid}"
        frozen.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(2.0)  # had it been handed the task, it would run it now
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        await frozen.stop()
        if other is not None:
            await other.stop()
    assert _attempts_run(test_dir, "fresh") == [f"ran-fresh-{other.pid}-1"]


RETRIED: list[int] = []


@immortal.activity(retry=immortal.RetryPolicy(initial_interval=0.05, jitter=0))
async def fails_once_then_waits(tag: str) -> str:
    attempt = immortal.activity.info().attempt
    RETRIED.append(attempt)
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    await asyncio.sleep(3)
    return tag


@immortal.workflow
async def retried_flow(ctx: WorkflowContext, tag: str) -> str:
    return await ctx.activity(fails_once_then_waits, tag)


async def test_a_delivery_of_an_attempt_that_no_longer_counts_is_confirmed_and_not_run(
    nats_url: str, prefix: str, client: Client
) -> None:
    RETRIED.clear()
    async with running_worker(
        nats_url, prefix, workflows=[retried_flow], activities=[fails_once_then_waits]
    ):
        handle = await client.start(retried_flow, "stale")
        history = await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.type is EventType.ACTIVITY_ATTEMPT_SCHEDULED for e in h),
        )
        while RETRIED != [1, 2]:
            await asyncio.sleep(0.02)
        # A first delivery of attempt 1, long after it failed (as a frozen worker's buffers
        # would hold it): the worker asks the hub before it runs any user code.
        [scheduled] = [e for e in history if e.type is EventType.ACTIVITY_SCHEDULED]
        stale = ActivityTask(
            workflow_id=handle.workflow_id,
            run_id=handle.run_id,
            workflow_type="retried_flow",
            workflow_queue="default",
            scheduled_id=scheduled.id,
            seq=1,
            name="fails_once_then_waits",
            input=encode_args(["stale"]),
            attempt=1,
        )
        subject = client.names.task_subject(client.tenant, "default", "act")
        js = client.nc.jetstream()
        await js.publish(subject, encode(stale), headers={"Nats-Msg-Id": "a-stale-copy"})
        assert await handle.result(timeout=20) == "stale"
    assert RETRIED == [1, 2]  # attempt 1 did not run again
    history = await handle.history()
    assert_well_formed(history)
    assert not any(e.type is EventType.ACTIVITY_RESULT_IGNORED for e in history)


SLOW_RUNS: list[int] = []


@immortal.activity
async def eight_seconds(x: int) -> int:
    SLOW_RUNS.append(immortal.activity.info().attempt)
    await asyncio.sleep(8)
    return x


@immortal.workflow
async def slow_flow(ctx: WorkflowContext, x: int) -> int:
    return await ctx.activity(eight_seconds, x)


async def test_a_worker_with_a_short_lease_leaves_the_queues_lease_alone(
    nats_url: str, prefix: str, client: Client
) -> None:
    SLOW_RUNS.clear()
    kinds = {"workflows": [slow_flow], "activities": [eight_seconds]}
    async with running_worker(nats_url, prefix, **kinds):  # the queue's lease: 30 s
        consumer = client.names.task_consumer(client.tenant, "default", "act")
        js = client.nc.jetstream()
        # A worker with a shorter lease honours it itself; the queue's consumer keeps 30 s.
        async with running_worker(nats_url, prefix, lease=3.0, **kinds) as short:
            assert short.liveness_ttl <= 3.0
            info = await js.consumer_info(client.names.stream_tasks, consumer)
            assert info.config.ack_wait == 30.0
        handle = await client.start(slow_flow, 8)
        assert await handle.result(timeout=30) == 8
    assert SLOW_RUNS == [1]  # not redelivered at 3 s by someone else's lease
    history = await handle.history()
    assert not any(e.type is EventType.ACTIVITY_ATTEMPT_FAILED for e in history)


async def test_a_lease_longer_than_the_queues_is_refused_naming_both(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[timed_flow], activities=[timed_work]):
        worker = Worker(nats_url, prefix=prefix, activities=[timed_work], lease=60.0)
        with pytest.raises(LeaseMismatchError, match=r"lease of 60 s.*lease of 30 s"):
            await worker.start()  # refused before it registers or pulls anything
        assert not await client.workers() or all(
            w.worker != worker.worker_id for w in await client.workers()
        )
        # The command line says so in one line and exits 2.
        args = ["-m", "immortal_worker", "tests.workflows", "--server", nats_url]
        proc = subprocess.run(
            [sys.executable, *args, "--prefix", prefix, "--lease", "60"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "60 s" in errors[0] and "30 s" in errors[0]
    assert "Traceback" not in proc.stderr
