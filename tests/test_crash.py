"""Crashes: worker and hub run as separate processes and are SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from immortal import Client, EventType
from immortal._codec import unpack
from immortal_hub import Hub
from tests.helpers import assert_well_formed, wait_for_history
from tests.procs import start_hub, start_worker
from tests.workflows import chain, gated_flow


async def _wait_for_file(pattern: str, directory: Path, timeout: float = 20.0) -> Path:
    async with asyncio.timeout(timeout):
        while True:
            found = sorted(directory.glob(pattern))
            if found:
                return found[0]
            await asyncio.sleep(0.02)


async def _wait_until_registered_holding(client: Client, prefix: str, worker: str) -> None:
    kv = await client.nc.jetstream().key_value(f"{prefix}-workers")
    async with asyncio.timeout(10):
        while True:
            entry = await kv.get(f"default.default.{worker}")
            if entry.value and unpack(entry.value)["held"]:
                return
            await asyncio.sleep(0.05)


async def test_worker_killed_mid_activity_another_finishes(
    nats_url: str, prefix: str, client: Client, hub: Hub, test_dir: Path
) -> None:
    # A 60 s lease: the run can finish within the 30 s below only if the hub hands the dead
    # worker's task back when its liveness key expires, instead of waiting out the lease.
    first = await start_worker(nats_url, test_dir, prefix=prefix, lease=60.0, worker_id="doomed")
    try:
        handle = await client.start(gated_flow, "k1")
        await _wait_for_file(f"started-k1-{first.pid}", test_dir)
        await _wait_until_registered_holding(client, prefix, "doomed")
        await first.kill()  # SIGKILL while the activity runs
    finally:
        await first.kill()
    (test_dir / "gate-k1").touch()
    second = await start_worker(nats_url, test_dir, prefix=prefix, lease=60.0, worker_id="heir")
    try:
        result = await handle.result(timeout=30)
    finally:
        await second.stop()
    assert result == f"k1 done by {second.pid}!"
    history = await handle.history()
    assert_well_formed(history)
    completions = [e for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    assert len(completions) == 2  # gated once, add_suffix once
    gated_done = completions[0]
    assert gated_done.attrs["worker"] == "heir"
    # The dead worker's attempt counts as lost, and the heir ran the next one.
    lost = [e for e in history if e.type is EventType.ACTIVITY_ATTEMPT_FAILED]
    assert [e.attrs["failure"]["type"] for e in lost] == ["WorkerLost"]
    assert lost[0].attrs["attempt"] == 1 and gated_done.attrs["attempt"] == 2
    assert not any(e.type is EventType.ACTIVITY_RESULT_IGNORED for e in history)
    assert hub.handed_back >= 1


async def test_hub_killed_between_transitions_run_completes_once(
    nats_url: str, prefix: str, test_dir: Path
) -> None:
    hub = await start_hub(nats_url, prefix)
    worker = await start_worker(nats_url, test_dir, prefix=prefix)
    try:
        async with Client(nats_url, prefix=prefix) as client:
            handles = [await client.start(chain, 12, id=f"chain-{i}") for i in range(5)]
            for kill_at in (4, 12, 20):  # history lengths at which the hub dies
                await wait_for_history(
                    client,
                    handles[0].workflow_id,
                    handles[0].run_id,
                    lambda h, n=kill_at: len(h) >= n,
                )
                await hub.kill()
                await asyncio.sleep(0.3)  # results pile up in IMM_IN while no hub runs
                hub = await start_hub(nats_url, prefix)
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
            histories = await asyncio.gather(*(h.history() for h in handles))
    finally:
        await worker.stop()
        await hub.stop()
    assert results == [[2 * i for i in range(12)]] * 5
    for history in histories:
        assert_well_formed(history)
        assert sum(e.type is EventType.ACTIVITY_SCHEDULED for e in history) == 12
        assert sum(e.type is EventType.ACTIVITY_COMPLETED for e in history) == 12
        assert sum(e.type is EventType.WORKFLOW_COMPLETED for e in history) == 1
