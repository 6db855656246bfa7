"""The saga example in examples/: compensation on failure, run for real."""

from __future__ import annotations

from examples import saga
from immortal import Client, EventType
from tests.helpers import running_worker


async def test_saga_books_or_compensates_in_reverse_order(
    nats_url: str, prefix: str, client: Client
) -> None:
    saga.LEDGER.clear()
    async with running_worker(
        nats_url, prefix, workflows=saga.workflows, activities=saga.activities
    ):
        ok = await client.start(saga.book_trip, "rome", 5_000)
        assert await ok.result(timeout=20) == {
            "status": "booked",
            "steps": ["flight booked for rome", "hotel booked for rome", "charged 5000 for rome"],
        }
        bad = await client.start(saga.book_trip, "paris", 50_000)
        outcome = await bad.result(timeout=20)
    assert outcome["status"] == "compensated"
    assert "CardDeclined" in outcome["reason"]
    assert outcome["undone"] == [
        "cancelled: hotel booked for paris",
        "cancelled: flight booked for paris",
    ]
    history = await bad.history()
    names = [e.attrs["name"] for e in history if e.type is EventType.ACTIVITY_SCHEDULED]
    assert names == [
        "reserve_flight",
        "reserve_hotel",
        "charge_card",
        "cancel_hotel",
        "cancel_flight",
    ]
    failed = [e for e in history if e.type is EventType.ACTIVITY_FAILED]
    assert len(failed) == 1 and failed[0].attrs["reason"] == "non-retryable error"
    # Every step reached the outside world exactly once, under its own idempotency key.
    assert sorted(saga.LEDGER.values()).count("cancelled: hotel booked for paris") == 1
    assert len(saga.LEDGER) == 3 + 2 + 2
