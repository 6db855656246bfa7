"""One tenant's burst must not stand in front of another's single workflow: the hub keeps a
few slots for tenants that apply little, and bounds its JetStream writes in flight, a quiet
tenant's going first (hub/_limits.py, hub/_writes.py). The arithmetic, without NATS."""

from __future__ import annotations

import asyncio

from immortal_hub._limits import Admission
from immortal_hub._writes import WriteGate


async def test_a_burst_leaves_the_reserved_slots_to_a_quiet_tenant() -> None:
    a = Admission(slots=64)
    assert a.reserve == 4
    for _ in range(80):
        assert a.try_enter("burst")
    started = [asyncio.create_task(a.start("burst")) for _ in range(80)]
    await asyncio.sleep(0)
    assert sum(t.done() for t in started) == 60  # the last 4 slots are not the burst's
    assert a.try_enter("quiet")
    await asyncio.wait_for(a.start("quiet"), 1)  # at once, without one of the burst's ending
    a.release("quiet")
    a.release("burst")  # a slot freed goes to the burst again, up to the reserve
    await asyncio.sleep(0)
    assert sum(t.done() for t in started) == 61
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


async def test_writes_are_bounded_and_the_lightest_tenant_goes_first() -> None:
    held = {"burst": 50, "steady": 5, "quiet": 1}
    gate = WriteGate(2, held.__getitem__, light=2)
    order: list[str] = []
    release = asyncio.Event()

    async def write(tenant: str, tag: str) -> None:
        async with gate.slot(tenant):
            order.append(tag)
            await release.wait()

    async with gate.slot("quiet"):  # a light tenant wrote: the others are bounded now
        pass
    first = [asyncio.create_task(write("burst", f"burst-{i}")) for i in range(2)]
    await asyncio.sleep(0)
    assert gate.in_flight == 2
    queued = [asyncio.create_task(write("burst", f"burst-{i}")) for i in range(2, 5)]
    queued.append(asyncio.create_task(write("steady", "steady")))
    await asyncio.sleep(0)
    assert gate.waiting == 4 and order == ["burst-0", "burst-1"]
    # A light tenant's write never waits: it goes now, beside the two in flight.
    quiet = asyncio.create_task(write("quiet", "quiet"))
    await asyncio.sleep(0)
    assert order[-1] == "quiet" and gate.in_flight == 3
    release.set()
    await asyncio.gather(*first, *queued, quiet)
    # Then the lighter of the waiting tenants, then the burst in arrival order.
    assert order[3:] == ["steady", "burst-2", "burst-3", "burst-4"]
    assert gate.in_flight == 0 and gate.waiting == 0


async def test_a_tenant_alone_is_not_bounded_and_the_bound_lifts_when_the_quiet_go() -> None:
    now = [0.0]
    held = {"burst": 50, "quiet": 1}
    gate = WriteGate(2, held.__getitem__, light=2, window=1.0, clock=lambda: now[0])
    release = asyncio.Event()

    async def write(tenant: str) -> None:
        async with gate.slot(tenant):
            await release.wait()

    held["burst"] = 1
    async with gate.slot("burst"):  # light once (its first inputs): it bounds only others
        pass
    held["burst"] = 50
    alone = [asyncio.create_task(write("burst")) for _ in range(5)]
    await asyncio.sleep(0)
    assert gate.in_flight == 5 and gate.waiting == 0  # nobody to protect: all in flight
    async with gate.slot("quiet"):
        pass
    bounded = [asyncio.create_task(write("burst")) for _ in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3 and gate.in_flight == 5  # a quiet tenant wrote: wait
    now[0] = 1.5  # the quiet tenant wrote nothing for longer than the window
    async with gate.slot("burst"):  # goes at once; as it ends, the waiting are let go
        pass
    assert gate.waiting == 0 and gate.in_flight == 8
    release.set()
    await asyncio.gather(*alone, *bounded)
    assert gate.in_flight == 0 and gate.waiting == 0
    assert not gate.bounding("burst")


async def test_a_write_cancelled_while_waiting_gives_its_turn_on() -> None:
    gate = WriteGate(1, lambda tenant: 0 if tenant == "quiet" else 10)
    async with gate.slot("quiet"):  # a quiet tenant wrote: the bound is on
        pass
    release = asyncio.Event()
    done: list[str] = []

    async def write(tag: str) -> None:
        async with gate.slot("t"):
            await release.wait()
            done.append(tag)

    holder = asyncio.create_task(write("holder"))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(write("doomed"))
    after = asyncio.create_task(write("after"))
    await asyncio.sleep(0)
    doomed.cancel()
    release.set()
    await asyncio.gather(holder, after, doomed, return_exceptions=True)
    assert done == ["holder", "after"] and gate.in_flight == 0
