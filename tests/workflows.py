"""Workflows and activities the tests run, in workers in this process or in others."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import immortal
from immortal import WorkflowContext


def _dir() -> Path:
    return Path(os.environ["IMMORTAL_TEST_DIR"])


@immortal.activity
async def double(x: int) -> int:
    return 2 * x


@immortal.activity
def square(x: int) -> int:  # sync: runs in a thread
    return x * x


@immortal.activity
async def add(a: int, b: int) -> int:
    return a + b


@immortal.workflow
async def three_step(ctx: WorkflowContext, x: int) -> int:
    d, s = await asyncio.gather(ctx.activity(double, x), ctx.activity(square, x))
    return await ctx.activity(add, d, s)


@immortal.workflow
async def chain(ctx: WorkflowContext, n: int) -> list[int]:
    out = []
    for i in range(n):
        out.append(await ctx.activity(double, i))
    return out


@immortal.activity
def gated(tag: str) -> str:
    """Announce that it runs (a file per process), then wait for the gate file."""
    d = _dir()
    (d / f"started-{tag}-{os.getpid()}").touch()
    while not (d / f"gate-{tag}").exists():
        time.sleep(0.02)
    return f"{tag} done by {os.getpid()}"


@immortal.workflow
async def gated_flow(ctx: WorkflowContext, tag: str) -> str:
    first = await ctx.activity(gated, tag)
    return await ctx.activity(add_suffix, first)


@immortal.activity
async def add_suffix(s: str) -> str:
    return s + "!"


workflows = [three_step, chain, gated_flow]
activities = [double, square, add, gated, add_suffix]


@immortal.activity(
    heartbeat_timeout=1.0,
    retry=immortal.RetryPolicy(initial_interval=0.1, jitter=0, maximum_attempts=5),
)
def beating(tag: str) -> str:
    """Heartbeats until its process's gate opens; records (in a file) being cancelled."""
    d = _dir()
    pid = os.getpid()
    (d / f"started-{tag}-{pid}").touch()
    try:
        while not (d / f"gate-{tag}-{pid}").exists():
            time.sleep(0.1)
            immortal.activity.heartbeat()
    except immortal.ActivityCancelledError:
        (d / f"cancelled-{tag}-{pid}").touch()
        raise
    return f"{tag} done by {pid}"


@immortal.workflow
async def beating_flow(ctx: WorkflowContext, tag: str) -> str:
    return await ctx.activity(beating, tag)


workflows = [*workflows, beating_flow]
activities = [*activities, beating]


@immortal.workflow
async def sleeper(ctx: WorkflowContext, seconds: float, x: int) -> int:
    await ctx.sleep(seconds)
    return await ctx.activity(double, x)


workflows = [*workflows, sleeper]


@immortal.workflow
async def waits_for_go(ctx: WorkflowContext, x: int) -> int:
    first = await ctx.activity(double, x)
    await ctx.wait_signal("go")
    return await ctx.activity(double, first)


workflows = [*workflows, waits_for_go]


def _stall_if_marked() -> None:
    """A test hook in workflow code: block this worker while ``stall-<pid>`` (holding a
    number of seconds) exists in the test directory, after saying so with ``stalled-<pid>``."""
    d, pid = _dir(), os.getpid()
    mark = d / f"stall-{pid}"
    if mark.exists():
        (d / f"stalled-{pid}").touch()
        time.sleep(float(mark.read_text() or "60"))


@immortal.workflow
async def stalls(ctx: WorkflowContext, x: int) -> int:
    doubled = await ctx.activity(double, x)  # its result runs the code on to the sleep
    await ctx.sleep(0.05)
    _stall_if_marked()  # in the workflow task the firing schedules: a sticky, pushed one
    return doubled + 1


workflows = [*workflows, stalls]


@immortal.activity(retry=immortal.RetryPolicy(initial_interval=0.1, maximum_attempts=5))
def timed_work(tag: str, seconds: float) -> str:
    """Mark each attempt that starts (a file per process and attempt), then work a while."""
    info = immortal.activity.info()
    (_dir() / f"ran-{tag}-{os.getpid()}-{info.attempt}").touch()
    time.sleep(seconds)
    return f"{tag} by {os.getpid()}"


@immortal.workflow
async def timed_flow(ctx: WorkflowContext, tag: str, seconds: float) -> str:
    return await ctx.activity(timed_work, tag, seconds)


@immortal.activity(start_to_close=1.0, retry=immortal.RetryPolicy(maximum_attempts=1))
async def overruns(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "in time"


@immortal.workflow
async def clockwork(ctx: WorkflowContext, x: int) -> str:
    """An activity (whose result the worker runs ahead with), a 2 s sleep, then an activity
    that overruns its 1 s start-to-close."""
    await ctx.activity(double, x)
    await ctx.sleep(2)
    try:
        return await ctx.activity(overruns, 1.5)
    except immortal.ActivityError as exc:
        return exc.cause.type


workflows = [*workflows, timed_flow, clockwork]
activities = [*activities, timed_work, overruns]
