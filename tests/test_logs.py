"""Logs: standard logging in workflow and activity code, stored once, tailed in order."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import immortal
from immortal import Client, EventType, WorkflowContext
from immortal._logs import LogLine
from tests.helpers import running_worker
from tests.test_cli import ROOT, _cli


@immortal.activity
async def pack_box(item: str) -> str:
    immortal.activity.logger.info("packing %s", item, extra={"item": item})
    return f"box of {item}"


@immortal.activity
def ship_box(box: str) -> str:  # sync: logs from a thread
    immortal.activity.logger.warning("shipping %s", box)
    return f"shipped {box}"


@immortal.workflow
async def fulfil(ctx: WorkflowContext, item: str) -> str:
    ctx.log.info("fulfilling %s", item)
    box = await ctx.activity(pack_box, item, queue="packing")
    ctx.log.info("packed")
    shipped = await ctx.activity(ship_box, box, queue="shipping")
    ctx.log.info("done: %s", shipped)
    return str(shipped)


@immortal.workflow
async def steps(ctx: WorkflowContext, n: int) -> int:
    for i in range(n):
        ctx.log.info("step %d", i)
        await ctx.activity(pack_box, str(i))
    ctx.log.info("all steps done")
    return n


@asynccontextmanager
async def _two_workers(nats_url: str, prefix: str) -> AsyncIterator[None]:
    """Worker A runs the workflow and packs, worker B ships: two writers of one run's log."""
    async with (
        running_worker(nats_url, prefix, workflows=[fulfil], activities=[pack_box],
                       queues=["default", "packing"], worker_id="worker-a"),
        running_worker(nats_url, prefix, workflows=[], activities=[ship_box],
                       queues=["shipping"], worker_id="worker-b"),
    ):  # fmt: skip
        yield


async def _collect(handle: immortal.WorkflowHandle, n: int, **kw: object) -> list[LogLine]:  # type: ignore[type-arg]
    lines: list[LogLine] = []
    async with asyncio.timeout(20):
        async for entry in handle.logs(**kw):  # type: ignore[arg-type]
            lines.append(entry)
            if len(lines) == n:
                break
    return lines


async def test_two_workers_one_ordered_stream(nats_url: str, prefix: str, client: Client) -> None:
    handle = await client.start(fulfil, "lamp")
    tail = asyncio.create_task(_collect(handle, 5, follow=True))
    async with _two_workers(nats_url, prefix):
        assert await handle.result(timeout=20) == "shipped box of lamp"
        lines = await tail
    assert [entry.message for entry in lines] == [
        "fulfilling lamp", "packing lamp", "packed", "shipping box of lamp",
        "done: shipped box of lamp",
    ]  # fmt: skip
    assert [entry.seq for entry in lines] == sorted(entry.seq for entry in lines)
    assert {entry.worker for entry in lines} == {"worker-a", "worker-b"}
    packing = lines[1]
    assert packing.activity == "pack_box" and packing.attempt == 1
    assert packing.fields == {"item": "lamp"}
    history = await handle.history()
    scheduled = next(e for e in history if e.type is EventType.ACTIVITY_SCHEDULED)
    assert packing.event_id == scheduled.id  # the event the line belongs to
    assert lines[0].event_id is not None and lines[0].event_id < scheduled.id
    # --from-seq rewinds to exactly that line
    assert [e.seq for e in await _collect(handle, 3, from_seq=lines[2].seq)] == [
        e.seq for e in lines[2:]
    ]
    printed = await asyncio.to_thread(
        _cli, nats_url, prefix, "logs", handle.workflow_id, "--with-history"
    )
    assert printed.returncode == 0, printed.stderr
    out = printed.stdout.splitlines()  # the timeline, each line under its step
    at = next(i for i, ln in enumerate(out) if f"#{scheduled.id}  activity pack_box(" in ln)
    assert "log" in out[at + 1] and "packing lamp" in out[at + 1]


async def test_replayed_workflow_logs_each_line_once(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(
        nats_url, prefix, workflows=[steps], activities=[pack_box], max_cached_runs=0
    ) as worker:
        handle = await client.start(steps, 3)
        assert await handle.result(timeout=20) == 3
        assert worker.replays >= 4  # every task replayed the run from its history
    lines = [entry.message for entry in await _collect(handle, 7)]
    workflow_lines = [m for m in lines if m.startswith(("step", "all"))]
    assert workflow_lines == ["step 0", "step 1", "step 2", "all steps done"]


def test_logs_cli_rejects_follow_with_history() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "immortal_hub", "logs", "x", "--with-history", "--follow"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0 and "--with-history" in done.stderr


async def test_tenant_retention_expires_closed_runs(
    nats_url: str, prefix: str, client: Client
) -> None:
    await client.set_retention(history=2.0, logs=1.0)
    assert (await client.retention()).history == 2.0
    async with (
        Client(nats_url, prefix=prefix, tenant="keeper") as keeper,
        running_worker(nats_url, prefix, workflows=[steps], activities=[pack_box]),
        running_worker(nats_url, prefix, workflows=[steps], activities=[pack_box], tenant="keeper"),
    ):
        handle = await client.start(steps, 1)
        kept = await keeper.start(steps, 1)
        assert await handle.result(timeout=20) == 1
        assert await kept.result(timeout=20) == 1
        assert len(await _collect(handle, 3)) == 3
        async with asyncio.timeout(15):
            while [entry async for entry in handle.logs()]:
                await asyncio.sleep(0.1)
        assert await handle.history()  # the history outlives the logs
        async with asyncio.timeout(15):
            while await handle.history():
                await asyncio.sleep(0.1)
        with pytest.raises(immortal.WorkflowNotFoundError):  # the index forgot it too
            await client.get_handle(handle.workflow_id)
        assert await kept.history()  # another tenant keeps its runs
        assert len([entry async for entry in kept.logs()]) == 3


async def test_logs_follow_cli_tails_two_workers_in_order(
    nats_url: str, prefix: str, client: Client
) -> None:
    handle = await client.start(fulfil, "chair", id="tailed")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", "logs", "tailed", "--follow",
        "-s", nats_url, "--prefix", prefix,
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with _two_workers(nats_url, prefix):
            assert await handle.result(timeout=20) == "shipped box of chair"
            lines = []
            async with asyncio.timeout(20):
                header = (await proc.stdout.readline()).decode()
                while len(lines) < 5:
                    lines.append((await proc.stdout.readline()).decode())
    finally:
        proc.terminate()
        await proc.wait()
    assert header.split()[:2] == ["seq", "time"]  # the columns are labelled
    seqs = [int(line.split()[0]) for line in lines]
    assert seqs == sorted(seqs)
    assert "fulfilling chair" in lines[0] and "@ worker-a" in lines[0]
    assert "shipping box of chair" in lines[3] and "@ worker-b" in lines[3]
    assert "done: shipped box of chair" in lines[4]
