"""Idempotent starts: one run per key, also past JetStream's duplicate window."""

from __future__ import annotations

import asyncio

import pytest

import immortal
from immortal import Client, EventType, IdReusePolicy, WorkflowAlreadyStartedError
from immortal._names import encode_token
from immortal_hub import Hub, ResourceSettings
from tests.helpers import running_worker
from tests.workflows import gated_flow, three_step


async def _runs_of(client: Client, prefix: str, workflow_id: str) -> set[str]:
    info = await client.nc.jetstream().stream_info(
        f"{prefix.upper()}_HISTORY",
        subjects_filter=f"{prefix}.hist.default.{encode_token(workflow_id)}.*",
    )
    return {s.rsplit(".", 1)[1] for s in (info.state.subjects or {})}


async def test_same_idempotency_key_twice_is_one_run_even_after_the_duplicate_window(
    nats_url: str, prefix: str
) -> None:
    hub = Hub(nats_url, prefix=prefix, settings=ResourceSettings(duplicate_window=1.0))
    await hub.start()
    try:
        async with Client(nats_url, prefix=prefix) as client, running_worker(nats_url, prefix):
            js = client.nc.jetstream()
            assert (await js.stream_info(f"{prefix.upper()}_IN")).config.duplicate_window == 1.0
            first = await client.start(three_step, 3, id="pay-1", idempotency_key="req-42")
            assert await first.result(timeout=20) == 15
            again = await client.start(three_step, 3, id="pay-1", idempotency_key="req-42")
            await asyncio.sleep(1.5)  # past the duplicate window
            later = await client.start(three_step, 3, id="pay-1", idempotency_key="req-42")
            assert first.run_id == again.run_id == later.run_id
            assert await later.result(timeout=20) == 15
            assert await _runs_of(client, prefix, "pay-1") == {first.run_id}
    finally:
        await hub.stop()


async def test_workflow_id_reuse_policies(
    nats_url: str, prefix: str, client: Client, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("IMMORTAL_TEST_DIR", str(tmp_path))
    async with running_worker(nats_url, prefix):
        running = await client.start(gated_flow, "g", id="order-7")  # waits on its gate file
        with pytest.raises(WorkflowAlreadyStartedError, match="order-7"):
            await client.start(gated_flow, "g", id="order-7")
        same = await client.start(
            gated_flow, "g", id="order-7", id_reuse_policy=IdReusePolicy.RETURN_EXISTING
        )
        assert same.run_id == running.run_id
        # A running run is found from its history, and listed as running (once it has run
        # for a second: the hub lists a run that lives that long).
        assert (await client.get_handle("order-7")).run_id == running.run_id
        async with asyncio.timeout(5):
            while not (open_runs := (await client.list_workflows(status="running")).runs):
                await asyncio.sleep(0.1)
        [listed] = open_runs
        assert (listed.workflow_id, listed.run_id) == ("order-7", running.run_id)
        (tmp_path / "gate-g").touch()
        await running.result(timeout=20)
        async with asyncio.timeout(5):  # listed with its close, just after the append
            while not (listed_now := (await client.list_workflows(status="closed")).runs):
                await asyncio.sleep(0.05)
        assert [(r.run_id, r.status) for r in listed_now] == [(running.run_id, "completed")]
        # Closed: the default policy allows a new run; reject_duplicate never does.
        with pytest.raises(WorkflowAlreadyStartedError):
            await client.start(
                gated_flow, "g", id="order-7", id_reuse_policy=IdReusePolicy.REJECT_DUPLICATE
            )
        second = await client.start(gated_flow, "g", id="order-7")
        assert second.run_id != running.run_id
        assert await second.result(timeout=20)
        history = await second.history()
    assert history[0].type is EventType.WORKFLOW_STARTED
    assert await _runs_of(client, prefix, "order-7") == {running.run_id, second.run_id}
    newest = await client.get_handle("order-7")
    assert newest.run_id == second.run_id


def test_activity_idempotency_key_is_stable_across_attempts() -> None:
    a = immortal._activity.ActivityInfo("t", "wf", "run", "type", 5, "charge", 1, "w1")
    b = immortal._activity.ActivityInfo("t", "wf", "run", "type", 5, "charge", 3, "w2")
    assert a.idempotency_key == b.idempotency_key == "t/wf/run/5"


async def test_a_claim_whose_start_was_lost_is_finished_by_the_retry(
    nats_url: str, prefix: str, client: Client
) -> None:
    # A caller claimed the key, then died (or lost its connection) before its start reached
    # a hub: the key names a run with no history. Retrying with the same key starts that run.
    from immortal._codec import pack
    from immortal._wire import now_ms

    kv = await client.nc.jetstream().key_value(f"{prefix}-idem")
    claimed = {"workflow_id": "pay-2", "run_id": "r" * 32, "ts": now_ms()}
    await kv.create(f"default.{encode_token('key:req-43')}", pack(claimed))
    async with running_worker(nats_url, prefix):
        handle = await client.start(three_step, 3, id="pay-2", idempotency_key="req-43")
        assert (handle.workflow_id, handle.run_id) == ("pay-2", "r" * 32)
        assert await handle.result(timeout=20) == 15
        again = await client.start(three_step, 3, id="pay-2", idempotency_key="req-43")
        assert again.run_id == handle.run_id
    assert await _runs_of(client, prefix, "pay-2") == {"r" * 32}
