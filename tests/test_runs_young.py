"""A run is listed as open once it has run for a second; one that closes sooner costs the
runs index its closed record alone (hub/_runs_index.py). Nothing stays unlisted: a hub that
stops lists its young runs, and the hub that recovers a killed one lists what it left."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

import immortal_hub._push
from immortal import Client, EventType, HistoryEvent
from immortal._codec import pack
from immortal._wire import RunState, RunStatus, Transition, decode, encode
from immortal_hub import Hub
from immortal_hub._emissions import Emission
from immortal_hub._push_recovery import UNLISTED_HEADER, Recovery
from tests.helpers import running_hub, running_worker
from tests.procs import start_hub
from tests.workflows import three_step, waits_for_go


async def _runs_last_seq(client: Client) -> int:
    info = await client.nc.jetstream().stream_info(client.names.stream_runs)
    return info.state.last_seq


async def _listed(client: Client, run_id: str, status: str, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            page = await client.list_workflows(status=status, limit=100)  # type: ignore[arg-type]
            if any(r.run_id == run_id for r in page.runs):
                return
            await asyncio.sleep(0.1)


async def test_a_short_run_costs_one_index_write_and_a_long_one_is_listed_after_a_second(
    client: Client, hub: Hub, nats_url: str, prefix: str
) -> None:
    async with running_worker(nats_url, prefix):
        before = await _runs_last_seq(client)
        short = await client.start(three_step, 2)
        assert await short.result(timeout=20) == 8
        await _listed(client, short.run_id, "completed")
        await asyncio.sleep(1.5)  # past the second: a young run would have been listed by now
        assert await _runs_last_seq(client) == before + 1  # its closed record, nothing else
        running = await client.list_workflows(status="running")
        assert short.run_id not in {r.run_id for r in running.runs}

        long = await client.start(waits_for_go, 1)
        page = await client.list_workflows(status="running")
        assert long.run_id not in {r.run_id for r in page.runs}  # young: not listed yet
        await _listed(client, long.run_id, "running", within=5)
        assert hub._runs.young() == 0
        await long.signal("go")
        assert await long.result(timeout=20) == 4
        await _listed(client, long.run_id, "completed")
        page = await client.list_workflows(status="running")
        assert long.run_id not in {r.run_id for r in page.runs}  # its open record removed
    # open record, closed record, the open record's removal
    assert await _runs_last_seq(client) == before + 1 + 3


async def test_a_hub_that_stops_lists_its_young_runs(nats_url: str, prefix: str) -> None:
    async with Client(nats_url, prefix=prefix) as client:
        async with running_hub(nats_url, prefix) as hub:
            handle = await client.start(waits_for_go, 1)  # no worker: waits for its first task
            await handle.describe()  # applied
            assert hub._runs.young() == 1
        page = await client.list_workflows(status="running")
        assert [r.run_id for r in page.runs] == [handle.run_id]  # listed as the hub stopped


async def test_a_killed_hubs_young_runs_are_listed_by_the_hub_that_recovers_it(
    nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(immortal_hub._push, "HUB_DEAD_S", 4.0)
    doomed = await start_hub(nats_url, prefix)
    client = await Client(nats_url, prefix=prefix).__aenter__()
    try:
        started = asyncio.Event()

        async def on_append(msg: Msg) -> None:
            if decode(Transition, msg.data).events[0].type is EventType.WORKFLOW_STARTED:
                await doomed.kill()  # within the run's first second: before it was listed
                started.set()

        sub = await client.nc.subscribe(f"{prefix}.hist.>", cb=on_append)
        handle = await client.start(waits_for_go, 1)
        await asyncio.wait_for(started.wait(), 20)
        await sub.unsubscribe()
        await asyncio.sleep(1.5)
        page = await client.list_workflows(status="running")
        assert page.runs == []  # its hub died before it listed it
        async with running_hub(nats_url, prefix):
            # Listed by the heir: by its recovery of the dead hub's key, or (if the start's
            # reply was lost with the hub) by the start's copy sent durably, applied again.
            await _listed(client, handle.run_id, "running", within=20)
            async with running_worker(nats_url, prefix):
                await handle.signal("go")
                assert await handle.result(timeout=20) == 4
    finally:
        await client.__aexit__(None, None, None)
        await doomed.kill()


async def test_the_recovery_of_a_dead_hub_lists_its_young_runs_still_open(
    client: Client, hub: Hub
) -> None:
    js = client.nc.jetstream()
    start = (await js.stream_info(client.names.stream_history)).state.last_seq + 1
    for run, status in (("young-open", RunStatus.RUNNING), ("young-closed", RunStatus.COMPLETED)):
        state = RunState(
            workflow_id=run, run_id=run, workflow_type="t", queue="default", status=status
        )
        events = [HistoryEvent(id=1, type=EventType.WORKFLOW_STARTED, ts=1)]
        subject = client.names.history_subject(client.tenant, run, run)
        body = encode(Transition(events=events, state=state))
        await js.publish(subject, body, headers={UNLISTED_HEADER: "ghost"})
    kv = await js.key_value(client.names.bucket_hubs)
    revision = await kv.put("ghost", pack({"hub": "ghost", "from_seq": start, "ts": 0}))

    async def durable(tenant: str, e: Emission) -> None:
        raise AssertionError("no pushed task to recover here")

    recovery = Recovery(client.nc, kv, client.names, "claimer", durable, hub._runs.list_if_open)
    assert await recovery.recover([("ghost", revision)]) == []
    assert recovery.listed == 2  # both looked at; the closed one's history says so
    page = await client.list_workflows(status="running")
    assert [r.run_id for r in page.runs] == ["young-open"]
