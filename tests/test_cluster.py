"""A three-node JetStream cluster: replicated streams, and runs that finish exactly once
while a node dies and comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from immortal import Client, EventType, Names
from immortal._connect import server_urls
from immortal.testing import NatsCluster
from immortal_hub import Hub
from immortal_hub._resources import ResourceSettings, bucket_configs, stream_configs
from tests.helpers import assert_well_formed
from tests.procs import start_hub, start_worker
from tests.workflows import chain

RUNS = 200
LATE_RUNS = 20  # started while a node is down
STEPS = 4  # activities per run: 1 start + 5 workflow tasks + 4 results = 10 appends


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    c = NatsCluster(base_dir=tmp_path / "cluster")
    await c.start()
    try:
        yield c
    finally:
        await c.close()


def test_server_urls_take_a_comma_separated_list() -> None:
    assert server_urls("nats://a:1, nats://b:2,") == ["nats://a:1", "nats://b:2"]
    assert server_urls(["nats://a:1,nats://b:2", "nats://c:3"]) == [
        "nats://a:1",
        "nats://b:2",
        "nats://c:3",
    ]
    with pytest.raises(ValueError):
        server_urls(" , ")


async def test_hub_creates_streams_and_buckets_with_three_replicas(cluster: NatsCluster) -> None:
    settings = ResourceSettings(replicas=3)
    hub = Hub(cluster.urls, settings=settings)
    await hub.start()
    try:
        js = hub.nc.jetstream()
        names = Names("imm")
        streams = [cfg.name for cfg in stream_configs(names, settings)]
        streams += [f"KV_{kv.bucket}" for kv in bucket_configs(names, settings)]
        for stream in streams:
            assert stream is not None
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and info.cluster.leader, stream
            assert len(info.cluster.replicas or []) == 2, stream  # the two followers
    finally:
        await hub.stop()


async def test_runs_complete_exactly_once_while_nodes_die(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    test_dir = tmp_path / "work"
    test_dir.mkdir()
    hub = await start_hub(cluster.url, "imm", "--replicas", "3")
    worker = await start_worker(cluster.url, test_dir)
    try:
        async with Client(cluster.urls) as client:
            handles = list(
                await asyncio.gather(
                    *(client.start(chain, STEPS, id=f"chain-{i}") for i in range(RUNS))
                )
            )
            js = client.nc.jetstream()
            # Mid-run (a quarter of the appends made), SIGKILL the node that leads the
            # history stream, and bring it back; then the JetStream meta leader.
            await _wait_for_appends(js, RUNS * (2 + 2 * STEPS) // 4)
            victim = await cluster.stream_leader("IMM_HISTORY")
            assert victim is not None
            await cluster.kill(victim)
            # Starts while the node is down (and the streams it led elect new leaders).
            handles += await asyncio.gather(
                *(client.start(chain, STEPS, id=f"late-{i}") for i in range(LATE_RUNS))
            )
            await cluster.start_node(victim)
            victim = await cluster.meta_leader()
            assert victim is not None
            await cluster.kill(victim)
            await asyncio.sleep(1.0)
            await cluster.start_node(victim)
            results = await asyncio.gather(*(h.result(timeout=40) for h in handles))
            histories = [await h.history() for h in handles]
            reports = [await h.verify() for h in handles]
            newest = [(await client.get_handle(h.workflow_id)).run_id for h in handles]
            dead_letters = (await js.stream_info("IMM_DLQ")).state.messages
            replicas = (await js.stream_info("IMM_HISTORY")).config.num_replicas
    finally:
        await worker.stop()
        await hub.stop()
    assert replicas == 3  # `immortal hub --replicas 3`
    assert results == [[2 * i for i in range(STEPS)]] * (RUNS + LATE_RUNS)
    assert newest == [h.run_id for h in handles]  # one run per workflow id
    for history in histories:
        assert_well_formed(history)
        assert sum(e.type is EventType.WORKFLOW_COMPLETED for e in history) == 1
        assert sum(e.type is EventType.ACTIVITY_SCHEDULED for e in history) == STEPS
        assert sum(e.type is EventType.ACTIVITY_COMPLETED for e in history) == STEPS
    assert all(r.ok for r in reports), [r.problems for r in reports if not r.ok]
    assert dead_letters == 0


async def _wait_for_appends(js: JetStreamContext, appends: int) -> None:
    async with asyncio.timeout(30):
        while (await js.stream_info("IMM_HISTORY")).state.last_seq < appends:
            await asyncio.sleep(0.05)
