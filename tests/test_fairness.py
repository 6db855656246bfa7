"""Per-tenant limits against a real nats-server: a throttled tenant loses nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from immortal import Client, EventType
from immortal_hub import Hub, TenantLimits
from tests.helpers import assert_well_formed, running_worker
from tests.procs import start_hub
from tests.workflows import chain


async def test_a_tenant_over_its_limits_completes_everything_while_another_is_served(
    nats_url: str, prefix: str
) -> None:
    hub = Hub(
        nats_url,
        prefix=prefix,
        tenant_limits={"*": TenantLimits(max_in_flight=50), "a": TenantLimits(2, rate=40)},
    )
    await hub.start()
    try:
        async with (
            Client(nats_url, prefix=prefix, tenant="a") as a,
            Client(nats_url, prefix=prefix, tenant="b") as b,
            running_worker(nats_url, prefix, tenant="a"),
            running_worker(nats_url, prefix, tenant="b"),
        ):
            # 40 starts at once: past 2 in flight and 40 inputs/s, tenant a's inputs are
            # answered busy and wait in its own IMM_IN subjects.
            a_runs = await asyncio.gather(*(a.start(chain, 1) for _ in range(40)))
            b_runs = [await b.start(chain, 2) for _ in range(5)]
            assert await asyncio.gather(*(h.result(timeout=30) for h in b_runs)) == [[0, 2]] * 5
            a_results = await asyncio.gather(*(h.result(timeout=60) for h in a_runs))
            assert a_results == [[0]] * 40  # none lost
            for h in a_runs:
                history = await h.history()
                assert_well_formed(history)
                assert sum(e.type is EventType.ACTIVITY_COMPLETED for e in history) == 1
    finally:
        await hub.stop()
    assert hub.refused["a"] > 0  # sent durable, then applied from IMM_IN
    assert hub.admission.peak("a") == 2
    assert hub.refused["b"] == 0  # b stayed under its limits: never pushed aside


async def test_a_quiet_tenants_steps_wait_behind_no_burst(nats_url: str, prefix: str) -> None:
    # Tenant a fills the hub with 300 starts at once; tenant b runs workflows one at a time
    # meanwhile. b's inputs take the slots a burst leaves free, and its writes never wait
    # for a's in the write gate (a's do, two at a time in flight here).
    hub = Hub(nats_url, prefix=prefix, concurrency=16, max_writes=2)
    await hub.start()
    try:
        async with (
            Client(nats_url, prefix=prefix, tenant="a") as a,
            Client(nats_url, prefix=prefix, tenant="b") as b,
            running_worker(nats_url, prefix, tenant="a"),
            running_worker(nats_url, prefix, tenant="b"),
        ):
            burst = asyncio.gather(*(a.start(chain, 1) for _ in range(300)))
            b_results = [await (await b.start(chain, 2)).result(timeout=30) for _ in range(5)]
            a_runs = await burst
            assert await asyncio.gather(*(h.result(timeout=60) for h in a_runs)) == [[0]] * 300
    finally:
        await hub.stop()
    assert b_results == [[0, 2]] * 5
    assert hub._writes.waited["a"] > 0  # the burst was held back at the gate...
    assert hub._writes.waited["b"] == 0  # ...and the quiet tenant never was


async def test_the_hub_command_takes_tenant_limits(nats_url: str, prefix: str) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "immortal_hub", "hub", "--tenant-limit", "a=in_flight:x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2 and "'x' is not a number" in bad.stderr
    hub = await start_hub(nats_url, prefix, "--tenant-limit", "*=in_flight:1,rate:100")
    try:
        async with (
            Client(nats_url, prefix=prefix) as client,
            running_worker(nats_url, prefix),
        ):
            runs = await asyncio.gather(*(client.start(chain, 1) for _ in range(20)))
            assert await asyncio.gather(*(h.result(timeout=30) for h in runs)) == [[0]] * 20
            queued = await client.nc.jetstream().stream_info(f"{prefix.upper()}_IN")
    finally:
        await hub.stop()
    assert queued.state.last_seq > 0  # one at a time: the rest waited in IMM_IN
