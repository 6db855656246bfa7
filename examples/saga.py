"""A saga: book a trip step by step; if a later step fails for good, undo the earlier ones.

Workflow code catches the :class:`ActivityError` that a failed activity raises (after its
retry policy is used up, or at once for a non-retryable error) and runs compensations in
reverse order. Each step hands ``immortal.activity.info().idempotency_key`` to the outside
world, so a retried step is never applied twice there.

    uv run immortal-worker examples.saga
    uv run immortal workflow start book_trip '"paris"' 50000 --wait
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import immortal
from immortal import ActivityError, ApplicationError, RetryPolicy, WorkflowContext

# A stand-in for the outside world (an airline's and a hotel's APIs): keyed by the
# activity's idempotency key, so a retry that repeats a call changes nothing.
LEDGER: dict[str, str] = {}


def _record(action: str) -> str:
    key = immortal.activity.info().idempotency_key
    LEDGER.setdefault(key, action)
    return LEDGER[key]


@immortal.activity
async def reserve_flight(trip: str) -> str:
    return _record(f"flight booked for {trip}")


@immortal.activity
async def cancel_flight(booking: str) -> str:
    return _record(f"cancelled: {booking}")


@immortal.activity
async def reserve_hotel(trip: str) -> str:
    return _record(f"hotel booked for {trip}")


@immortal.activity
async def cancel_hotel(booking: str) -> str:
    return _record(f"cancelled: {booking}")


@immortal.activity(retry=RetryPolicy(initial_interval=0.1, maximum_attempts=3))
async def charge_card(trip: str, cents: int) -> str:
    if cents > 10_000:
        raise ApplicationError(
            f"{cents} cents is over the limit", type="CardDeclined", non_retryable=True
        )
    return _record(f"charged {cents} for {trip}")


@immortal.workflow
async def book_trip(ctx: WorkflowContext, trip: str, cents: int) -> dict[str, Any]:
    undo: list[tuple[Callable[..., Any], str]] = []
    try:
        flight = await ctx.activity(reserve_flight, trip)
        undo.append((cancel_flight, flight))
        hotel = await ctx.activity(reserve_hotel, trip)
        undo.append((cancel_hotel, hotel))
        receipt = await ctx.activity(charge_card, trip, cents)
        return {"status": "booked", "steps": [flight, hotel, receipt]}
    except ActivityError as failed:
        ctx.log.warning("trip %s failed (%s); compensating", trip, failed.cause)
        undone = [await ctx.activity(step, booking) for step, booking in reversed(undo)]
        return {"status": "compensated", "reason": str(failed.cause), "undone": undone}


workflows = [book_trip]
activities = [reserve_flight, cancel_flight, reserve_hotel, cancel_hotel, charge_card]
