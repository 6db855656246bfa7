"""Workflows for the payload codec's tests: every kind of payload carries MARK."""

from __future__ import annotations

import asyncio

import immortal
from immortal import ApplicationError, RetryPolicy, WorkflowContext

MARK = "SECRET-MARKER-5d1e"


@immortal.activity(heartbeat_timeout=5, retry=RetryPolicy(initial_interval=0.1, jitter=0))
async def enc_work(text: str) -> str:
    info = immortal.activity.info()
    immortal.activity.logger.info("working on %s", text, extra={"note": text})
    immortal.activity.heartbeat({"progress": f"half of {text}"})
    await asyncio.sleep(1.8)  # long enough for a heartbeat to be sent
    if info.attempt == 1:
        raise ApplicationError(f"first attempt at {text} fails", details={"why": text})
    return f"worked {text} after {info.heartbeat_details}"


@immortal.workflow
async def enc_child(ctx: WorkflowContext, text: str) -> str:
    ctx.log.info("child got %s", text)
    return f"child of {text}"


@immortal.workflow
async def enc_parent(ctx: WorkflowContext, text: str, rounds: int = 0) -> str:
    if rounds == 0:
        ctx.continue_as_new(text, 1)  # a continued run's input is a payload too
    ctx.log.info("parent got %s", text, extra={"secret": text})
    ctx.set_status({"phase": f"waiting with {text}"})
    signalled = await ctx.wait_signal("go")
    worked = await ctx.activity(enc_work, f"{text}/{signalled}")
    child = await ctx.child(enc_child, text)
    return f"{worked} | {child} | {signalled}"


@immortal.workflow
async def enc_fails(ctx: WorkflowContext, text: str) -> str:
    raise ApplicationError(f"workflow fails holding {text}", type="Refusal", details=text)


@immortal.workflow
async def enc_waits(ctx: WorkflowContext, text: str) -> str:
    """Waits for a signal ``go`` (payloads of any other origin are refused)."""
    got = await ctx.wait_signal("go")
    return f"{text}: {got}"


workflows = [enc_parent, enc_child, enc_fails, enc_waits]
activities = [enc_work]


@immortal.activity
async def enc_quick(text: str) -> str:
    return f"quick {text}"


@immortal.workflow
async def enc_quick_flow(ctx: WorkflowContext, text: str) -> str:
    """Activities without heartbeats: their results come back run ahead by the worker."""
    first = await ctx.activity(enc_quick, text)
    return await ctx.activity(enc_quick, first)


@immortal.activity
async def enc_refuses(text: str) -> str:
    raise ApplicationError(f"refusing {text}", type="Refused", non_retryable=True, details=text)


@immortal.workflow
async def enc_catches(ctx: WorkflowContext, text: str) -> list[str]:
    """Failures of an activity and of a child reach the code opened."""
    caught = []
    try:
        await ctx.activity(enc_refuses, text)
    except immortal.ActivityError as exc:
        caught.append(f"{exc.cause.type}: {exc.cause.message} ({exc.cause.details})")
    try:
        await ctx.child(enc_fails, text)
    except immortal.ChildWorkflowError as exc:
        caught.append(f"{exc.cause.type}: {exc.cause.message} ({exc.cause.details})")
    return caught


workflows += [enc_quick_flow, enc_catches]
activities += [enc_quick, enc_refuses]
