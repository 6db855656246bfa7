"""The workflow whose recorded history is tests/fixtures/pack_and_ship.json, and changed
versions of it, as a user's CI would hold them (also imported by ``immortal replay``)."""

from __future__ import annotations

import immortal
from immortal import ApplicationError, RetryPolicy, WorkflowContext

QUICK = RetryPolicy(initial_interval=0.2, jitter=0, maximum_attempts=3)


@immortal.activity(retry=QUICK)
async def pack(order: str) -> str:
    if immortal.activity.info().attempt == 1:
        raise ApplicationError("the packing station is busy", type="StationBusy")
    return f"box for {order}"


@immortal.activity
async def label(order: str) -> str:
    return f"label for {order}"


@immortal.workflow
async def pack_and_ship(ctx: WorkflowContext, order: str) -> str:
    box = await ctx.activity(pack, order)
    await ctx.sleep(0.3)  # the courier comes a little later
    return f"{box}, shipped"


# What a careless change looks like: a different activity where `pack` was.
@immortal.workflow(name="pack_and_ship")
async def pack_and_ship_relabelled(ctx: WorkflowContext, order: str) -> str:
    box = await ctx.activity(label, order)
    await ctx.sleep(0.3)
    return f"{box}, shipped"


# And a safe one: new behaviour behind a patch, so recorded runs replay the old path.
@immortal.workflow(name="pack_and_ship")
async def pack_and_ship_patched(ctx: WorkflowContext, order: str) -> str:
    box = await ctx.activity(pack, order)
    await ctx.sleep(0.3)
    if ctx.patched("label-after-sleep"):
        box += " + " + await ctx.activity(label, order)
    return f"{box}, shipped"


# Another breaking change: the sleep dropped.
@immortal.workflow(name="pack_and_ship")
async def pack_and_ship_hasty(ctx: WorkflowContext, order: str) -> str:
    box = await ctx.activity(pack, order)
    return f"{box}, shipped"
