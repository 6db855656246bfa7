"""The hub's OpenTelemetry metrics, read with the SDK's in-memory reader."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from immortal import Client
from immortal._codec import pack
from immortal_hub import Hub, TenantLimits
from tests.helpers import running_worker
from tests.workflows import chain, gated_flow

Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point collected now: (metric name, attributes) -> value."""
    out: Points = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out[(m.name, frozenset((p.attributes or {}).items()))] = p.value  # type: ignore[union-attr]
    return out


def at(got: Points, name: str, **attrs: str) -> float | None:
    return got.get((name, frozenset(attrs.items())))


async def test_queue_depth_lag_and_hub_counters(
    nats_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMMORTAL_TEST_DIR", str(tmp_path))
    reader = InMemoryMetricReader()
    hub = Hub(
        nats_url,
        prefix=prefix,
        meter_provider=MeterProvider(metric_readers=[reader]),
        metrics_interval=1.0,
        tenant_limits={"slow": TenantLimits(rate=0.1, burst=1)},
    )
    await hub.start()
    try:
        async with (
            Client(nats_url, prefix=prefix) as client,
            Client(nats_url, prefix=prefix, tenant="slow") as slow,
        ):
            async with running_worker(nats_url, prefix, queues=["idle"]):
                pass  # its task consumers exist now; nobody serves them
            for i in range(3):
                await client.start(chain, i, queue="idle")  # 3 workflow tasks wait
            for _ in range(4):
                await slow.start(chain, 1)  # one token: the rest wait in IMM_IN
            async with running_worker(nats_url, prefix, queues=["busy"]):
                gated = await client.start(gated_flow, "m", queue="busy")  # held by a worker
                # A worker that vanishes while listing a held task: the hub hands it back.
                workers = await client.nc.jetstream().key_value(f"{prefix}-workers")
                await workers.put("default.busy.ghost", pack({"held": [f"{prefix}.ghost.ack"]}))
                await asyncio.sleep(0.2)
                await workers.delete("default.busy.ghost")

                want = {
                    ("immortal.queue.tasks.pending", "default", "idle", "workflow"): 3,
                    ("immortal.queue.tasks.ack_pending", "default", "busy", "activity"): 1,
                }
                async with asyncio.timeout(20):
                    while True:
                        got = points(reader)
                        if all(
                            at(got, n, tenant=t, queue=q, kind=k) == v
                            for (n, t, q, k), v in want.items()
                        ) and (at(got, "immortal.queue.inputs.pending", tenant="slow", queue="default") or 0) >= 2:  # fmt: skip
                            break
                        await asyncio.sleep(0.1)
                assert at(got, "immortal.queue.tasks.pending", tenant="default", queue="idle", kind="activity") == 0  # fmt: skip
                assert at(got, "immortal.queue.tasks.ack_pending", tenant="default", queue="idle", kind="workflow") == 0  # fmt: skip
                assert at(got, "immortal.queue.inputs.pending", tenant="default", queue="idle") == 0
                assert (at(got, "immortal.hub.transitions", tenant="default", queue="idle") or 0) >= 3  # fmt: skip
                assert (
                    at(got, "immortal.hub.tasks.handed_back", tenant="default", queue="busy") == 1
                )
                assert (at(got, "immortal.hub.inputs.refused", tenant="slow") or 0) >= 2
                assert at(got, "immortal.hub.inputs.in_flight", tenant="default") == 0

                polls = hub._metrics.polls
                for _ in range(20):
                    points(reader)
                assert hub._metrics.polls - polls <= 2  # read at most once a second

                (tmp_path / "gate-m").touch()
                assert (await gated.result(timeout=20)).startswith("m done by")
    finally:
        (tmp_path / "gate-m").touch()  # never leave the activity's thread blocked
        await hub.stop()
