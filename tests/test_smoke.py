from __future__ import annotations

from immortal import Client, EventType
from immortal_worker import Worker

from immortal.examples.orders import Order, Receipt, activities, place_order, workflows


async def test_order_runs_end_to_end(nats_url: str, prefix: str, client: Client) -> None:
    worker = Worker(nats_url, prefix=prefix, workflows=workflows, activities=activities)
    await worker.start()
    try:
        handle = await client.start(place_order, Order(id="o1", items=["a", "b"], cents=500))
        receipt = await handle.result(timeout=20)
    finally:
        await worker.stop()
    assert receipt == Receipt(
        order_id="o1", charged_cents=500, tracking="TRACK-O1",
        checked=["stock ok for 2 items", "fraud score 0.01 for o1"],
    )
    history = await handle.history()
    assert [e.id for e in history] == list(range(1, len(history) + 1))
    print([e.type.value for e in history])
    assert history[-1].type is EventType.WORKFLOW_COMPLETED
