"""The workloads' workflows and activities, served by the benchmark's worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import immortal
from immortal import WorkflowContext


@immortal.activity
async def noop(x: int) -> int:
    return x


@immortal.workflow
async def one_activity(ctx: WorkflowContext, x: int) -> int:
    return await ctx.activity(noop, x)


@immortal.workflow
async def five_sequential(ctx: WorkflowContext, x: int) -> int:
    for _ in range(5):
        x = await ctx.activity(noop, x + 1)
    return x


@immortal.workflow
async def fan_out_ten(ctx: WorkflowContext, x: int) -> int:
    results = await asyncio.gather(*(ctx.activity(noop, x + i) for i in range(10)))
    return sum(results)


@immortal.activity
async def hold(tag: str) -> str:
    """Report (on a file named by tag and pid) that it started, then run for a long time."""
    marker = Path(os.environ.get("IMMORTAL_BENCH_DIR", "/tmp")) / f"{tag}.{os.getpid()}"
    marker.write_text(str(time.time()))
    await asyncio.sleep(120)
    return tag


@immortal.workflow
async def held(ctx: WorkflowContext, tag: str) -> str:
    return await ctx.activity(hold, tag)


@immortal.workflow
async def sleep_once(ctx: WorkflowContext, seconds: float) -> int:
    await ctx.sleep(seconds)
    return 0


@immortal.workflow
async def waits(ctx: WorkflowContext, x: int) -> int:
    """Stays open until signalled ``go`` (the list workload's open runs)."""
    await ctx.wait_signal("go")
    return x


@immortal.workflow(name="rare")
async def rare(ctx: WorkflowContext, x: int) -> int:
    await ctx.wait_signal("go")
    return x
