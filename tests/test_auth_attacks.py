"""What the hub enforces where the broker cannot (auth on, real servers): JetStream
answers delivered to a reply subject a client chose, timers aimed at another tenant's
fired subject, reads outside the tenant through the relay. Each is refused, recorded in
the targeted tenant's IMM_AUDIT, and changes nothing; key rotation at the IdP with runs
in flight fails none of them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from immortal import Client, RunStatus
from immortal._codec import pack
from immortal._connect import connect
from immortal._names import Names
from immortal._timers import schedule_headers
from immortal._wire import StartWorkflow, TimerFired, encode
from immortal.security import PermissionDeniedError
from immortal.security.audit import AuditRecord, read_audit
from immortal_hub import Hub
from immortal_worker import Worker
from tests.security_fixtures import SecureStack, secure_stack
from tests.workflows import add, double, sleeper, square, three_step, waits_for_go

N = Names()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(tmp_path) as stack:
        hub = Hub(stack.url, security=stack.hub_security())
        await hub.start()
        try:
            yield stack
        finally:
            await hub.stop()


async def audit_of(stack: SecureStack, tenant: str, count: int = 1) -> list[AuditRecord]:
    nc = await nats.connect(stack.url, **stack.admin_nc_options())
    try:
        for _ in range(100):
            records = await read_audit(nc, N, tenant)
            if len(records) >= count:
                return records
            await asyncio.sleep(0.05)
        return records
    finally:
        await nc.close()


async def globex_run(stack: SecureStack) -> Client:
    """A run of tenant globex waiting for a signal (its queue is served by the hub)."""
    client = Client(stack.url, security=stack.security("gus", ["globex:writer"]))
    await client.connect()
    await client.start(waits_for_go, 1, id="victim")
    return client


async def test_a_jetstream_answer_aimed_at_another_tenants_inputs_is_refused(
    running: SecureStack,
) -> None:
    stack = running
    victim = await globex_run(stack)
    # A worker of acme stores a log line shaped like a start, then reads it back with a
    # direct get whose reply is globex's input subjects (request-reply and durable).
    security = stack.security("mallory", ["acme:worker"], queues=["default"])
    nc = await connect(stack.url, name="mallory", security=security)
    try:
        start = StartWorkflow(
            workflow_id="injected", run_id="r" * 32, workflow_type="waits_for_go", input=pack([1])
        )
        await nc.jetstream().publish("imm.log.acme.x.y", encode(start))
        for path in ("rpc", "in"):
            await nc.publish(
                "$JS.API.DIRECT.GET.IMM_LOGS.imm.log.acme.x.y",
                b"",
                reply=f"imm.{path}.globex.default.start.pvictim",
            )
        await nc.flush()
        records = await audit_of(stack, "globex", 2)
    finally:
        await nc.close()
    assert [r.reason for r in records] == ["forged_origin", "forged_origin"]
    assert all("JetStream delivered" in r.message for r in records)
    with pytest.raises(Exception, match="injected"):
        await victim.get_handle("injected")
    assert (await (await victim.get_handle("victim")).describe()).status is RunStatus.RUNNING
    await victim.close()


async def test_a_timer_aimed_at_another_tenant_is_refused(
    running: SecureStack,
) -> None:
    stack = running
    victim = await globex_run(stack)
    handle = await victim.get_handle("victim")
    fired = TimerFired(
        workflow_id="victim", run_id=handle.run_id, timer="t", kind="execution_timeout"
    )
    due = int(time.time() * 1000) + 200
    headers = schedule_headers(due, "imm.fired.globex.default", "evil-1")
    # A worker arms no timers (the hub arms its attempts'): the broker refuses it any.
    worker = stack.security("mallory", ["acme:worker"], queues=["default"])
    nc = await connect(stack.url, name="mallory", security=worker)
    try:
        with pytest.raises(Exception):  # noqa: B017 - refused by the broker: no ack comes
            await nc.jetstream().publish(
                "imm.timer.acme.x.t", encode(fired), headers=headers, timeout=1
            )
    finally:
        await nc.close()
    # A writer asks a hub for schedules: it may not publish one itself, on its own tenant's
    # subjects or aimed at another's fired subject.
    writer = stack.security("wally", ["acme:writer"])
    nc = await connect(stack.url, name="wally", security=writer)
    try:
        with pytest.raises(Exception):  # noqa: B017 - refused by the broker: no ack comes
            await nc.jetstream().publish(
                "imm.sched.acme.evil", encode(fired), headers=headers, timeout=1
            )
    finally:
        await nc.close()
    assert (await handle.describe()).status is RunStatus.RUNNING  # not timed out
    await victim.close()


async def test_the_read_relay_keeps_reads_inside_the_tenant(
    running: SecureStack,
) -> None:
    stack = running
    victim = await globex_run(stack)
    await victim.close()
    reader = stack.security("rita", ["acme:reader"])
    nc = await connect(stack.url, name="rita", security=reader)
    try:
        from immortal._jetstream import read_subject

        # The broker refuses globex's relay subject to an acme connection...
        with pytest.raises(PermissionDeniedError, match=r"imm\.read\.globex"):
            async for _ in read_subject(nc, N.stream_history, "imm.hist.globex.>"):
                pass
        # ...and the hub refuses a filter outside acme sent on acme's relay subject.
        inbox = nc.new_inbox()
        answers: list[dict[str, str]] = []

        async def answer(msg: nats.aio.msg.Msg) -> None:
            answers.append(msg.headers or {})

        await nc.subscribe(inbox, cb=answer)
        body = {"stream": N.stream_history, "next_by_subj": "imm.hist.globex.>", "seq": 1}
        relay = N.read_subject("acme", reader.sender())
        await nc.publish(relay, json.dumps(body).encode(), reply=inbox)
        for _ in range(100):
            if answers:
                break
            await asyncio.sleep(0.05)
        assert answers[0]["Status"] == "403"
        assert "outside tenant 'acme'" in answers[0]["Description"]
        # A relay request with a reply that is not the sender's inbox is not answered.
        body = {"stream": N.stream_history, "next_by_subj": "imm.hist.acme.>", "seq": 1}
        await nc.publish(
            N.read_subject("acme", reader.sender()), json.dumps(body).encode(), reply="imm.x"
        )
        await nc.flush()
    finally:
        await nc.close()
    records = await audit_of(stack, "acme", 2)
    assert [r.action for r in records] == ["read", "read"]
    assert "not the sender's inbox" in records[1].message


async def test_key_rotation_at_the_issuer_with_runs_in_flight(
    running: SecureStack,
) -> None:
    stack = running
    activities = [double, square, add]
    workflows = [three_step, sleeper]

    def worker(name: str) -> Worker:
        security = stack.security(name, ["acme:worker"], queues=["default"])
        return Worker(stack.url, workflows=workflows, activities=activities, security=security)

    first = worker("svc-a")
    await first.start()
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        handles = [await ann.start(sleeper, 1.0, i, id=f"r-{i}") for i in range(10)]
        _, new_kid = stack.idp.rotate()  # the old key is gone from the key set
        second = worker("svc-b")  # a token signed with the new key
        await second.start()
        await first.stop()  # runs move to the new worker mid-flight
        async with Client(stack.url, security=stack.security("bob", ["acme:writer"])) as bob:
            more = [await bob.start(three_step, i, id=f"n-{i}") for i in range(5)]
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result() for h in [*handles, *more])), 60
            )
        await second.stop()
    assert results == [2 * i for i in range(10)] + [2 * i + i * i for i in range(5)]
    assert new_kid in stack.service.verifier.keys.kids
