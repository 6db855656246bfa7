"""The bundled example: an order that is checked, charged and shipped.

Two checks run in parallel with ``asyncio.gather``; then the card is charged (a plain,
blocking function, run in a thread), then the order ships.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import immortal
from immortal import WorkflowContext


class Order(BaseModel):
    id: str
    items: list[str]
    cents: int


class Receipt(BaseModel):
    order_id: str
    charged_cents: int
    tracking: str
    checked: list[str]


@immortal.activity
async def check_stock(items: list[str]) -> str:
    await asyncio.sleep(0.01)
    return f"stock ok for {len(items)} items"


@immortal.activity
async def check_fraud(order: Order) -> str:
    return f"fraud score 0.01 for {order.id}"


@immortal.activity
def charge(order_id: str, cents: int) -> int:
    return cents


@immortal.activity
async def ship(order_id: str) -> str:
    return f"TRACK-{order_id.upper()}"


@immortal.workflow
async def place_order(ctx: WorkflowContext, order: Order) -> Receipt:
    stock, fraud = await asyncio.gather(
        ctx.activity(check_stock, order.items), ctx.activity(check_fraud, order)
    )
    charged = await ctx.activity(charge, order.id, order.cents)
    tracking = await ctx.activity(ship, order.id)
    ctx.log.info("order %s shipped as %s", order.id, tracking)
    return Receipt(
        order_id=order.id, charged_cents=charged, tracking=tracking, checked=[stock, fraud]
    )


workflows = [place_order]
activities = [check_stock, check_fraud, charge, ship]
