"""The durable core end to end: a real nats-server, hub and workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

import immortal
from immortal import Client, EventType, RunStatus, WorkflowContext
from immortal_hub import Hub
from immortal_worker import Worker
from tests.helpers import assert_well_formed, running_worker, wait_for_history
from tests.workflows import add, double, three_step


async def test_three_activities_two_in_parallel(nats_url: str, prefix: str, client: Client) -> None:
    async with running_worker(nats_url, prefix):
        handle = await client.start(three_step, 7, id="three")
        assert await handle.result(timeout=20) == 2 * 7 + 7 * 7

    history = await handle.history()
    assert_well_formed(history)
    types = [e.type for e in history]
    assert types[:5] == [
        EventType.WORKFLOW_STARTED,
        EventType.WORKFLOW_TASK_SCHEDULED,
        EventType.WORKFLOW_TASK_COMPLETED,
        EventType.ACTIVITY_SCHEDULED,
        EventType.ACTIVITY_SCHEDULED,
    ]
    assert types[-2:] == [EventType.WORKFLOW_TASK_COMPLETED, EventType.WORKFLOW_COMPLETED]
    scheduled = [e for e in history if e.type is EventType.ACTIVITY_SCHEDULED]
    assert [e.attrs["name"] for e in scheduled] == ["double", "square", "add"]
    completed = {e.caused_by for e in history if e.type is EventType.ACTIVITY_COMPLETED}
    assert completed == {e.id for e in scheduled}
    # `add` is scheduled only after both parallel activities completed.
    both_done = max(
        e.id
        for e in history
        if e.type is EventType.ACTIVITY_COMPLETED and e.caused_by != scheduled[2].id
    )
    assert scheduled[2].id > both_done

    desc = await handle.describe()
    assert desc.status is RunStatus.COMPLETED
    assert desc.history_length == len(history)
    assert desc.workflow_type == "three_step"


async def test_pydantic_arguments_and_results(nats_url: str, prefix: str, client: Client) -> None:
    from immortal.examples.orders import Order, Receipt, activities, place_order, workflows

    async with running_worker(nats_url, prefix, workflows=workflows, activities=activities):
        handle = await client.start(place_order, Order(id="o9", items=["a"], cents=99))
        receipt = await handle.result(timeout=20)
    assert isinstance(receipt, Receipt)
    assert (receipt.order_id, receipt.charged_cents, receipt.tracking) == ("o9", 99, "TRACK-O9")


@immortal.activity
async def echo(values: list[str]) -> list[str]:
    return values


@immortal.workflow(name="values")
async def values(ctx: WorkflowContext) -> list[str]:
    before = [ctx.now().isoformat(), str(ctx.random().random()), str(ctx.uuid4())]
    echoed = await ctx.activity(echo, before)  # records the live values in history
    return [*before, *echoed]  # `before` as recomputed by the replay that ran this line


async def test_now_random_uuid_are_deterministic_on_replay(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(
        nats_url, prefix, workflows=[values], activities=[echo], max_cached_runs=0
    ) as worker:
        handle = await client.start(values)
        result = await handle.result(timeout=20)
        assert worker.replays >= 2  # no cache: the second task replayed the first from history
    replayed, live = result[:3], result[3:]
    assert replayed == live
    assert len(set(live)) == 3 and live[1] != "0.0"
    history = await handle.history()
    assert not any(e.type is EventType.WORKFLOW_TASK_FAILED for e in history)


async def test_two_hubs_two_workers_two_hundred_runs(nats_url: str, prefix: str) -> None:
    hubs = [Hub(nats_url, prefix=prefix, hub_id=f"hub-{i}") for i in range(2)]
    for h in hubs:
        await h.start()
    try:
        async with (
            running_worker(nats_url, prefix, worker_id="w1"),
            running_worker(nats_url, prefix, worker_id="w2"),
            Client(nats_url, prefix=prefix) as client,
        ):
            handles = await asyncio.gather(
                *(client.start(three_step, i, id=f"run-{i}") for i in range(200))
            )
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in handles)), timeout=120
            )
            assert results == [2 * i + i * i for i in range(200)]
            histories = await asyncio.gather(*(h.history() for h in handles))
    finally:
        for h in hubs:
            await h.stop()
    for history in histories:
        assert_well_formed(history)
        assert sum(e.type is EventType.WORKFLOW_COMPLETED for e in history) == 1
    assert all(h.transitions > 0 for h in hubs), "both hubs should have taken transitions"
    workers = {e.attrs["worker"] for hist in histories for e in hist if "worker" in e.attrs}
    assert workers == {"w1", "w2"}


@immortal.workflow(name="evolving")
async def evolving_v1(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.activity(double, x)
    return await ctx.activity(add, a, 1, queue="adders")


@immortal.workflow(name="evolving")
async def evolving_v2(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.activity(double, x)
    return await ctx.activity(double, a)  # changed: a different activity at the same point


async def test_changed_code_is_a_visible_nondeterminism_error(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflows=[evolving_v1], activities=[double]):
        handle = await client.start(evolving_v1, 5)
        await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.attrs.get("name") == "add" for e in h),
        )
    # v1 is gone with `add` scheduled on a queue nobody served yet; v2 replays that
    # history when `add` completes.
    async with (
        running_worker(nats_url, prefix, workflows=[evolving_v2], activities=[double]),
        running_worker(nats_url, prefix, queues=["adders"], workflows=[], activities=[add]),
    ):
        history = await wait_for_history(
            client,
            handle.workflow_id,
            handle.run_id,
            lambda h: any(e.type is EventType.WORKFLOW_TASK_FAILED for e in h),
        )
    failed = next(e for e in history if e.type is EventType.WORKFLOW_TASK_FAILED)
    failure = failed.attrs["failure"]
    assert failure["type"] == "NonDeterminismError"
    assert "'add'" in failure["message"] and "'double'" in failure["message"]
    desc = await handle.describe()
    assert desc.status is RunStatus.RUNNING  # stuck visibly, not corrupted
    assert "NonDeterminismError" not in (desc.last_workflow_task_failure or "x")
    assert "'add'" in (desc.last_workflow_task_failure or "")


async def test_malformed_input_is_dead_lettered_and_others_go_on(
    nats_url: str, prefix: str, client: Client, hub: Hub
) -> None:
    nc = client.nc
    js = nc.jetstream()
    await js.publish(f"{prefix}.in.default.default.act", b"\xc1 definitely not msgpack")
    await js.publish(
        f"{prefix}.in.default.default.start", b"\x81\xa1x\x01"
    )  # valid msgpack, wrong shape
    async with running_worker(nats_url, prefix):
        assert await (await client.start(three_step, 3)).result(timeout=20) == 15

    dlq = await _dead_letters(nc, prefix, expect=2)
    reasons = sorted(m.headers["Imm-Error"] for m in dlq)
    assert "not valid msgpack" in reasons[1] or "not valid msgpack" in reasons[0]
    assert any("malformed StartWorkflow" in r for r in reasons)
    assert {m.headers["Imm-Subject"] for m in dlq} == {
        f"{prefix}.in.default.default.act",
        f"{prefix}.in.default.default.start",
    }


async def _dead_letters(nc: NATS, prefix: str, expect: int) -> list:  # type: ignore[type-arg]
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"{prefix}.dlq.>", stream=f"{prefix.upper()}_DLQ")
    got: list = []  # type: ignore[type-arg]
    async with asyncio.timeout(10):
        while len(got) < expect:
            got += await sub.fetch(expect - len(got), timeout=5)
    return got


async def test_unregistered_workflow_type_is_recorded(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix, workflow_task_retry_delay=0.2):
        unknown = await client.start("no_such_workflow", 1)
        ok = await client.start(three_step, 2)
        assert await ok.result(timeout=20) == 8
        history = await wait_for_history(
            client,
            unknown.workflow_id,
            unknown.run_id,
            lambda h: any(e.type is EventType.WORKFLOW_TASK_FAILED for e in h),
        )
        await asyncio.sleep(1.0)  # several retries happen; identical failures are recorded once
        history = await (await client.get_handle(unknown.workflow_id, unknown.run_id)).history()
    failures = [e for e in history if e.type is EventType.WORKFLOW_TASK_FAILED]
    assert len(failures) == 1
    assert failures[0].attrs["failure"]["type"] == "UnknownWorkflowTypeError"
    assert "'no_such_workflow' is not registered" in failures[0].attrs["failure"]["message"]
    assert (await unknown.describe()).status is RunStatus.RUNNING  # waits for a worker that has it


async def test_failed_activity_fails_the_workflow_with_its_cause(
    nats_url: str, prefix: str, client: Client
) -> None:
    @immortal.activity(retry=immortal.RetryPolicy(maximum_attempts=1))
    async def explode(x: int) -> int:
        raise immortal.ApplicationError("boom", type="Kaboom", details={"x": x})

    @immortal.workflow(name="explosive")
    async def explosive(ctx: WorkflowContext, x: int) -> int:
        return await ctx.activity(explode, x)

    async with running_worker(nats_url, prefix, workflows=[explosive], activities=[explode]):
        handle = await client.start(explosive, 4)
        with pytest.raises(immortal.WorkflowFailedError) as info:
            await handle.result(timeout=20)
    cause = info.value.cause
    assert cause.type == "ActivityError"
    original = cause.__cause__
    assert isinstance(original, immortal.ApplicationError)
    # ApplicationError crosses two process boundaries intact.
    assert (original.type, original.message, original.details) == ("Kaboom", "boom", {"x": 4})
    assert original.non_retryable is False and "explode" in (original.remote_traceback or "")
    assert (await handle.describe()).status is RunStatus.FAILED


async def test_worker_waits_for_streams_and_the_hub_picks_up_old_starts(
    nats_url: str, prefix: str, tmp_path: Path
) -> None:
    # Starts made while no hub runs are durable; a hub started later runs them.
    hub = Hub(nats_url, prefix=prefix)
    await hub.start()
    await hub.stop()
    async with Client(nats_url, prefix=prefix) as client:
        handle = await client.start(three_step, 1)
        hub2 = Hub(nats_url, prefix=prefix)
        await hub2.start()
        try:
            async with running_worker(nats_url, prefix):
                assert await handle.result(timeout=20) == 3
        finally:
            await hub2.stop()


def test_worker_refuses_undecorated_functions() -> None:
    with pytest.raises(TypeError, match=r"not decorated with @immortal\.workflow"):
        Worker(workflows=[lambda ctx: None])


async def test_inputs_by_request_reply_are_applied_or_rejected_visibly(
    nats_url: str, prefix: str, client: Client, hub: Hub
) -> None:
    from immortal import Names, PayloadError
    from immortal._inputs import send_input

    names = Names(prefix)
    in_stream = f"{prefix.upper()}_IN"
    before = (await client.nc.jetstream().stream_info(in_stream)).state.last_seq
    async with running_worker(nats_url, prefix):
        assert await (await client.start(three_step, 5)).result(timeout=20) == 35
    # With a hub answering, no input needed a durable copy in IMM_IN.
    assert (await client.nc.jetstream().stream_info(in_stream)).state.last_seq == before
    with pytest.raises(PayloadError, match="not valid msgpack"):
        await send_input(client.nc, names, "default", "default", "act", b"\xc1", msg_id="x")
    dlq = await _dead_letters(client.nc, prefix, expect=1)
    assert dlq[0].headers["Imm-Subject"] == f"{prefix}.rpc.default.default.act.anon"
