"""Per-tenant limits and the hub's fair share: the arithmetic, without NATS."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from immortal_hub._limits import Admission, TenantLimits, TokenBucket, parse_tenant_limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_refills_at_its_rate_up_to_its_size() -> None:
    b = TokenBucket(rate=10, size=5, now=0.0)
    assert [b.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert b.wait_time(0.0) == pytest.approx(0.1)
    assert b.wait_time(0.0, 3) == pytest.approx(0.3)
    assert b.available(0.25) == pytest.approx(2.5)
    assert b.take(0.25, 2) and not b.take(0.25)
    assert b.available(60.0) == 5  # never more than the bucket holds
    assert b.wait_time(60.0) == 0.0


@given(
    rate=st.floats(0.5, 1000),
    size=st.floats(1, 100),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=50),
)
def test_bucket_never_grants_more_than_size_plus_rate_times_elapsed(
    rate: float, size: float, gaps: list[float]
) -> None:
    b = TokenBucket(rate=rate, size=size, now=0.0)
    now, granted = 0.0, 0
    for gap in gaps:
        now += gap
        while b.take(now):
            granted += 1
        assert 0 <= b.available(now) < 1
    assert granted <= size + rate * now + 1e-6


def test_parse_tenant_limit() -> None:
    assert parse_tenant_limit("acme=in_flight:50,rate:100") == (
        "acme",
        TenantLimits(max_in_flight=50, rate=100.0),
    )
    assert parse_tenant_limit("*=rate:2.5, burst:10") == (
        "*",
        TenantLimits(rate=2.5, burst=10.0),
    )
    assert parse_tenant_limit("b=in_flight:3")[1].rate is None
    for bad in ["acme", "=rate:1", "a=", "a=speed:3", "a=rate:x", "a=in_flight:2.5",
                "a=rate:1,rate:2", "a=in_flight:0", "a=rate:-1"]:  # fmt: skip
        with pytest.raises(ValueError):
            parse_tenant_limit(bad)


def test_bucket_size_defaults_to_one_second_of_rate() -> None:
    assert TenantLimits(rate=200).bucket_size == 200
    assert TenantLimits(rate=0.2).bucket_size == 1
    assert TenantLimits(rate=200, burst=10).bucket_size == 10


async def applied(a: Admission, tenant: str) -> None:
    """An input that entered takes a slot and is applied at once."""
    await a.start(tenant)
    a.release(tenant)


async def test_in_flight_cap_refuses_past_it_until_one_is_applied() -> None:
    a = Admission({"*": TenantLimits(max_in_flight=3), "big": TenantLimits(max_in_flight=5)})
    assert [a.try_enter("t") for _ in range(4)] == [True, True, True, False]
    assert [a.try_enter("big") for _ in range(6)] == [True] * 5 + [False]
    await applied(a, "t")
    assert a.try_enter("t") and not a.try_enter("t")
    assert a.in_flight("t") == 3 and a.in_flight() == 8 and a.peak("t") == 3


async def test_rate_refuses_when_the_bucket_is_empty_and_admits_as_it_refills() -> None:
    clock = Clock()
    a = Admission({"t": TenantLimits(rate=10, burst=2)}, clock=clock)
    assert [a.try_enter("t") for _ in range(3)] == [True, True, False]
    await applied(a, "t")
    await applied(a, "t")
    assert not a.try_enter("t")  # applying frees places, not tokens
    clock.now += 0.1
    assert a.try_enter("t") and not a.try_enter("t")
    assert a.try_enter("other")  # no limits of its own, and no default


async def test_a_bursting_tenant_cannot_keep_a_quiet_one_out() -> None:
    a = Admission(total=4)
    assert all(a.try_enter("burst") for _ in range(4))
    assert not a.try_enter("burst")  # the hub is full and burst holds all of it
    assert a.try_enter("quiet") and a.try_enter("quiet")  # under its share (4 / 2)
    assert not a.try_enter("quiet")
    await applied(a, "burst")
    assert not a.try_enter("burst")  # 5 held > 4, and burst holds more than its share
    for tenant in ("quiet", "quiet", "burst"):
        await applied(a, tenant)
    assert a.try_enter("burst")  # room again
    assert a.in_flight() == 3


async def test_slots_go_round_robin_among_tenants_with_inputs_waiting() -> None:
    a = Admission(slots=1)
    assert a.try_enter("busy")
    await a.start("busy")  # holds the only slot
    order: list[str] = []

    async def one(tenant: str) -> None:
        assert a.try_enter(tenant)
        await a.start(tenant)
        order.append(tenant)
        a.release(tenant)

    # Five of the busy tenant's inputs queue up before the quiet one's two.
    tasks = [asyncio.create_task(one(t)) for t in ["busy"] * 5 + ["quiet"] * 2]
    await asyncio.sleep(0)
    a.release("busy")
    await asyncio.gather(*tasks)
    assert order == ["busy", "quiet", "busy", "quiet", "busy", "busy", "busy"]
    assert a.in_flight() == 0


async def test_durable_inputs_wait_in_order_and_go_before_new_request_reply_ones() -> None:
    a = Admission({"t": TenantLimits(max_in_flight=1)})
    assert a.try_enter("t")
    order: list[int] = []

    async def durable(i: int) -> None:
        await a.admit("t")
        order.append(i)
        a.release("t")

    waiters = [asyncio.create_task(durable(i)) for i in range(3)]
    await asyncio.sleep(0)
    await applied(a, "t")
    assert not a.try_enter("t")  # a waiter entered: no overtaking
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert a.peak("t") == 1 and a.in_flight("t") == 0


async def test_a_cancelled_waiter_gives_its_place_back() -> None:
    a = Admission({"t": TenantLimits(max_in_flight=1)}, slots=1)
    assert a.try_enter("t")
    waiter = asyncio.create_task(a.admit("t"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await a.start("t")
    assert a.try_enter("o")
    queued = asyncio.create_task(a.start("o"))  # entered, waiting for the only slot
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    a.release("t")
    assert a.in_flight() == 0
    assert a.try_enter("t")
    await applied(a, "t")  # the slot is free


async def test_durable_inputs_wait_for_tokens_and_nothing_is_dropped() -> None:
    a = Admission({"t": TenantLimits(rate=50, burst=1)})
    t0 = time.monotonic()

    async def one() -> None:
        await a.admit("t")
        a.release("t")

    await asyncio.gather(*(one() for _ in range(10)))
    # One token up front, then one per 20 ms: never faster than the rate (slower is fine).
    assert time.monotonic() - t0 >= 9 / 50 * 0.95
    assert a.in_flight("t") == 0


async def test_window_sizes_pull_requests_by_what_could_enter() -> None:
    clock = Clock()
    a = Admission(
        {"t": TenantLimits(max_in_flight=2), "r": TenantLimits(rate=100, burst=3)}, clock=clock
    )
    assert await a.window("r", 10) == 3  # three tokens
    assert await a.window("t", 10) == 2  # two places
    assert await a.window("t", 1) == 1
    assert a.try_enter("r") and await a.window("r", 10) == 2
    for _ in range(2):
        await a.admit("t")
    pending = asyncio.create_task(a.window("t", 10))
    await asyncio.sleep(0.01)
    assert not pending.done()  # no place: the puller asks for nothing yet
    a.release("t")
    assert await asyncio.wait_for(pending, 1) == 1


async def test_results_may_go_ahead_of_queued_inputs_and_pullers_leave_them_room() -> None:
    clock = Clock()
    a = Admission({"t": TenantLimits(rate=10, burst=1)}, total=16, clock=clock)
    assert a.try_enter("t")
    start = asyncio.create_task(a.admit("t"))  # a durable start waits for a token
    await asyncio.sleep(0)
    clock.now += 0.1
    assert not a.try_enter("t")  # a start queues behind it
    assert a.try_enter("t", ahead=True)  # a result of running work does not
    start.cancel()
    assert await a.window("other", 100) == 16 - 2 - 2  # an eighth stays free for results
