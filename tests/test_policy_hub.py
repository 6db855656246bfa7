"""Tenants' policies decided by the hub, against a real nats-server with auth on (the auth
callout, a key set served over HTTP, tokens made here): before anything is appended, with
the reason in the client's error, the run's history and the decision log."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

import immortal
from immortal import Client, EventType, WorkflowContext, format_timeline
from immortal._names import Names
from immortal._transient import key_value
from immortal.policy import parse_policy, write_policy
from immortal.security import PermissionDeniedError, PolicyDeniedError
from immortal.security.audit import AuditRecord, read_audit
from immortal_hub import Hub
from immortal_worker import Worker
from tests.helpers import eventually
from tests.security_fixtures import SecureStack, hub_and_worker, secure_stack
from tests.workflows import add, double, square, three_step, waits_for_go


@immortal.workflow
async def refund(ctx: WorkflowContext, order: dict[str, Any]) -> str:
    await ctx.activity(double, int(order["amount"]))
    return f"refunded {order['amount']}"


ENGINES = ["builtin", "cedar"]


@pytest.fixture(params=ENGINES)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(tmp_path) as s:
        s.engine = request.param  # type: ignore[attr-defined]
        yield s


@pytest.fixture
async def running(stack: SecureStack) -> AsyncIterator[tuple[SecureStack, Hub]]:
    engine = stack.engine  # type: ignore[attr-defined]
    workflows = [three_step, waits_for_go, refund]
    activities = [double, square, add]
    async with hub_and_worker(
        stack, workflows=workflows, activities=activities, engine=engine
    ) as hub:
        yield stack, hub


async def apply(stack: SecureStack, text: str, *hubs: Hub) -> None:
    """Store the policy as a tenant admin would; wait until ``hubs`` use it."""
    document = parse_policy(text)
    async with Client(stack.url, security=stack.security("root", ["acme:admin"])) as admin:
        await write_policy(await key_value(admin.nc.jetstream(), "imm-policy"), document)
    for hub in hubs:
        for _ in range(200):
            policy = hub.policy.watch.get("acme")
            if policy is not None and policy.version == document.version:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"hub {hub.hub_id} never took policy v{document.version}")


async def audit(stack: SecureStack, hubs: list[Hub], **match: Any) -> list[AuditRecord]:
    """The tenant's audit records (batches flushed) that match ``match``."""
    for hub in hubs:
        await hub.policy.log.flush()
    await asyncio.sleep(0.05)  # the denies are stored by their own tasks
    nc = await nats.connect(stack.url, **stack.admin_nc_options())
    try:
        records = await read_audit(nc, Names("imm"), "acme")
    finally:
        await nc.close()
    return [r for r in records if all(getattr(r, k) == v for k, v in match.items())]


POLICY_V1 = """
tenant: acme
version: 1
group_type: team
relations:
  - queue:payments managed-by team:ops
rules:
  - id: r-writers-start
    effect: allow
    roles: [writer]
    actions: [workflow.start, workflow.signal]
    resources: {workflow_type: "refund*"}
  - id: r-writers-read
    effect: allow
    roles: [writer]
    actions: [workflow.read, logs.read]
  - id: r-queue-managers
    effect: allow
    relation: resource.queue managed-by principal
    actions: [workflow.start]
  - id: r-refund-limit
    effect: deny
    roles: [writer]
    actions: [workflow.start]
    when: input.amount > 10000
"""


async def test_rbac_allow_records_the_decision_and_deny_creates_no_run(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    await apply(stack, POLICY_V1, hub)
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        handle = await ann.start(refund, {"amount": 120}, id="refund-1")
        assert await asyncio.wait_for(handle.result(), 30) == "refunded 120"
        events = await handle.history()
        decision = next(e for e in events if e.type is EventType.POLICY_DECISION)
        assert decision.attrs["allow"] is True and decision.attrs["action"] == "workflow.start"
        assert decision.attrs["rule_ids"] == ["r-writers-start"]
        assert decision.attrs["policy_version"] == 1
        assert "r-writers-start" in decision.attrs["reason"]
        shown = f"#2  policy workflow.start  {decision.attrs['reason']}"
        assert any(line.endswith(shown) for line in format_timeline(events).splitlines())

        with pytest.raises(PolicyDeniedError) as refused:
            await ann.start(three_step, 3, id="other-1")
        assert str(refused.value).startswith("denied: no rule allows workflow.start")
        assert refused.value.policy_version == 1 and refused.value.rule_ids == ()
        assert isinstance(refused.value, PermissionDeniedError)  # role errors still catch it
        assert await ann.workflow_runs("other-1") == []  # no run

    denies = await audit(stack, [hub], action="workflow.start", decision="deny")
    assert len(denies) == 1
    deny = denies[0]
    assert deny.principal is not None and deny.principal["subject"] == "ann"
    assert deny.resource == {
        "queue": "default",
        "workflow_type": "three_step",
        "workflow_id": "other-1",
    }
    assert deny.policy_version == 1 and deny.message == str(refused.value)
    assert deny.input_digest == hashlib.sha256(immortal._codec.encode_args([3])).hexdigest()
    allows = await audit(stack, [hub], action="workflow.start", decision="allow")
    assert [a.rule_ids for a in allows] == [["r-writers-start"]]
    dumped = str([a.model_dump(exclude={"ts"}) for a in [*allows, *denies]])
    assert "120" not in dumped  # digests only (the time left out: it may hold "120")


async def test_rebac_through_a_group_and_abac_on_an_input_field(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    await apply(stack, POLICY_V1, hub)
    carl = stack.security("carl", ["acme:writer"], groups=["ops"])
    dave = stack.security("dave", ["acme:writer"])
    async with Client(stack.url, security=carl) as client:
        await client.start(three_step, 1, id="pay-1", queue="payments")  # ReBAC: ops manage it
    async with Client(stack.url, security=dave) as client:
        with pytest.raises(PolicyDeniedError, match=r"no rule allows workflow\.start"):
            await client.start(three_step, 1, id="pay-2", queue="payments")
        with pytest.raises(PolicyDeniedError, match="r-refund-limit") as limit:
            await client.start(refund, {"amount": 12_000}, id="refund-big")
        assert limit.value.rule_ids == ("r-refund-limit",)
        assert await client.workflow_runs("refund-big") == []
    allowed = await audit(stack, [hub], action="workflow.start", decision="allow")
    assert [(a.principal or {}).get("subject") for a in allowed] == ["carl"]
    assert allowed[0].rule_ids == ["r-queue-managers"]


def _window(version: int, *, open_: bool) -> str:
    edge = int(time.time()) + (3600 if open_ else -3600)
    return f"""
tenant: acme
version: {version}
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
  - id: r-signal-window
    effect: deny
    roles: [writer]
    actions: [workflow.signal]
    when: context.timestamp > {edge}
  - id: r-no-terminate-by-ann
    effect: deny
    principals: [user:ann]
    actions: [workflow.terminate]
"""


async def test_abac_on_time_refuses_a_signal_into_the_history_and_explicit_deny_wins(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    await apply(stack, _window(1, open_=False), hub)
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        handle = await ann.start(waits_for_go, 2, id="wait-1")
        await eventually(lambda: _has(handle, EventType.ACTIVITY_COMPLETED))
        with pytest.raises(PolicyDeniedError, match="r-signal-window"):
            await handle.signal("go", None)
        events = await handle.history()
        refused = [e for e in events if e.type is EventType.SIGNAL_REFUSED]
        assert len(refused) == 1
        assert refused[0].attrs["name"] == "go" and refused[0].attrs["policy_version"] == 1
        assert refused[0].attrs["rule_ids"] == ["r-signal-window"]
        assert "context.timestamp" in refused[0].attrs["reason"]
        assert refused[0].attrs["by"]["subject"] == "ann"
        assert not any(e.type is EventType.WORKFLOW_SIGNALED for e in events)
        assert events[-1].type is EventType.SIGNAL_REFUSED  # no workflow task follows it
        assert (await handle.describe()).status == "running"
        assert f"signal go refused  {refused[0].attrs['reason']}  by ann" in format_timeline(events)

        # Explicit deny beats allow: r-writers allows workflow.*, ann may not terminate.
        with pytest.raises(PolicyDeniedError, match="r-no-terminate-by-ann"):
            await handle.terminate("stop")
        refusal = (await handle.history())[-1]
        assert refusal.type is EventType.POLICY_DECISION and refusal.attrs["allow"] is False
        assert refusal.attrs["action"] == "workflow.terminate"
        assert (await handle.describe()).status == "running"

        await apply(stack, _window(2, open_=True), hub)  # the window opens
        await handle.signal("go", None)
        assert await asyncio.wait_for(handle.result(), 30) == 8

    denies = await audit(stack, [hub], decision="deny")
    assert [(d.action, d.rule_ids, d.policy_version) for d in denies] == [
        ("workflow.signal", ["r-signal-window"], 1),
        ("workflow.terminate", ["r-no-terminate-by-ann"], 1),
    ]


async def _has(handle: Any, kind: EventType) -> bool:
    return any(e.type is kind for e in await handle.history())


ACTIVITY_POLICY = """
tenant: acme
version: 1
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
  - id: r-doubling
    effect: allow
    roles: [writer]
    actions: [activity.run]
    resources: {activity_type: double}
  - id: r-no-squares
    effect: deny
    actions: [activity.run]
    resources: {activity_type: square}
"""


async def test_a_denied_activity_fails_its_attempt_for_good(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    await apply(stack, ACTIVITY_POLICY, hub)
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        handle = await ann.start(three_step, 3, id="steps-1")
        with pytest.raises(Exception, match="r-no-squares"):
            await asyncio.wait_for(handle.result(), 30)
        events = await handle.history()
    failed = [e for e in events if e.type is EventType.ACTIVITY_FAILED]
    assert len(failed) == 1
    assert failed[0].attrs["failure"]["type"] == "PolicyDenied"
    assert failed[0].attrs["failure"]["non_retryable"] is True
    assert failed[0].attrs["reason"] == "non-retryable error"
    assert not any(e.type is EventType.ACTIVITY_ATTEMPT_FAILED for e in events)
    denies = await audit(stack, [hub], action="activity.run", decision="deny")
    assert len(denies) == 1 and denies[0].resource is not None
    assert denies[0].resource["activity_type"] == "square"
    assert (denies[0].principal or {}).get("subject") == "ann"  # the run acts for its starter
    allows = await audit(stack, [hub], action="activity.run", decision="allow")
    assert [a.resource["activity_type"] for a in allows if a.resource] == ["double"]


READS = """
tenant: acme
version: 1
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
  - id: r-public-reads
    effect: allow
    roles: [reader]
    actions: [workflow.read]
    resources: {workflow_id: "public-*"}
"""


async def test_history_reads_are_refused_by_the_policy(running: tuple[SecureStack, Hub]) -> None:
    stack, hub = running
    await apply(stack, READS, hub)
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        for wid in ("public-1", "private-1"):
            await asyncio.wait_for((await ann.start(three_step, 1, id=wid)).result(), 30)
    async with Client(stack.url, security=stack.security("rita", ["acme:reader"])) as rita:
        public = await rita.get_handle("public-1")
        assert (await public.history())[0].type is EventType.WORKFLOW_STARTED
        # Rita may not read every run: even the newest message of one goes through the
        # relay, decided (tests/test_policy_live.py).
        with pytest.raises(PermissionDeniedError, match=r"no rule allows workflow\.read"):
            await rita.get_handle("private-1")
    denies = await audit(stack, [hub], action="workflow.read", decision="deny")
    assert denies and all((d.resource or {}).get("workflow_id") == "private-1" for d in denies)


@pytest.mark.parametrize("stack", ["builtin"], indirect=True)
async def test_a_policy_change_reaches_two_hubs_while_runs_are_in_flight(
    stack: SecureStack,
) -> None:
    hubs = [Hub(stack.url, security=stack.hub_security(), hub_id=f"hub-{i}") for i in (1, 2)]
    for hub in hubs:
        await hub.start()
    worker = Worker(
        stack.url,
        workflows=[waits_for_go],
        activities=[double],
        security=stack.security("svc-worker", ["acme:worker"], queues=["default"]),
    )
    await worker.start()
    try:
        await apply(stack, _window(1, open_=True), *hubs)
        async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
            handles = [await ann.start(waits_for_go, i, id=f"flight-{i}") for i in range(6)]
            for h in handles:
                await eventually(lambda h=h: _has(h, EventType.ACTIVITY_COMPLETED))
            await apply(stack, _window(2, open_=False), *hubs)  # signals now refused
            for h in handles:
                with pytest.raises(PolicyDeniedError, match=r"r-signal-window.*policy v2"):
                    await h.signal("go", None)
            await apply(stack, _window(3, open_=True), *hubs)
            for h in handles:
                await h.signal("go", None)
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 30)
            assert results == [4 * i for i in range(6)]
            for h in handles:
                events = await h.history()
                refused = [
                    e.attrs["policy_version"] for e in events if e.type is EventType.SIGNAL_REFUSED
                ]
                signalled = [e for e in events if e.type is EventType.WORKFLOW_SIGNALED]
                assert refused == [2] and len(signalled) == 1
        records = await audit(stack, hubs, action="workflow.signal")
        assert sorted((r.decision, r.policy_version) for r in records) == [
            *[("allow", 3)] * 6,
            *[("deny", 2)] * 6,
        ]
        assert {r.by for r in await audit(stack, hubs)} <= {"hub-1", "hub-2"}
    finally:
        await worker.stop()
        for hub in hubs:
            await hub.stop()


SERVING = """
tenant: acme
version: 1
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
  - id: r-workers-default
    effect: allow
    roles: [worker]
    actions: [worker.serve]
    resources: {queue: default}
"""


@pytest.mark.parametrize("stack", ["builtin"], indirect=True)
async def test_a_worker_is_refused_the_queues_its_principal_may_not_serve(
    stack: SecureStack,
) -> None:
    hub = Hub(stack.url, security=stack.hub_security())
    await hub.start()
    try:
        await apply(stack, SERVING, hub)
        for _ in range(100):  # the auth service watches the policy too
            policy = stack.service._policies.get("acme")
            if policy is not None and policy.version == 1:
                break
            await asyncio.sleep(0.01)
        token = stack.security("svc-worker", ["acme:worker"], queues=["default", "payments"])
        worker = Worker(
            stack.url,
            workflows=[three_step],
            activities=[double, square, add],
            queues=["payments"],
            security=token,
        )
        with pytest.raises(PermissionDeniedError):
            await worker.start()
        if worker._nc is not None:  # Worker.stop after a failed start fails (no _pushes yet)
            await worker._nc.close()
        good = Worker(
            stack.url, workflows=[three_step], activities=[double, square, add], security=token
        )
        await good.start()
        try:
            async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
                handle = await ann.start(three_step, 2, id="served-1")
                assert await asyncio.wait_for(handle.result(), 30) == 8
        finally:
            await good.stop()
        records = await audit(stack, [hub], action="worker.serve")
        assert {(r.resource or {}).get("queue"): r.decision for r in records} == {
            "default": "allow",
            "payments": "deny",
        }
    finally:
        await hub.stop()


LATE = """
tenant: acme
version: 1
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
  - id: r-ann-no-doubling
    effect: deny
    principals: [user:ann]
    actions: [activity.run]
    resources: {activity_type: double}
"""


@pytest.mark.parametrize("stack", ["builtin"], indirect=True)
async def test_a_policy_applied_mid_run_decides_its_activities_for_its_starter(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        handle = await ann.start(waits_for_go, 1, id="late-1")  # no policy yet: roles decide
        await eventually(lambda: _has(handle, EventType.ACTIVITY_COMPLETED))
        assert not await _has(handle, EventType.POLICY_DECISION)
        await apply(stack, LATE, hub)
        await handle.signal("go", None)
        with pytest.raises(Exception, match="r-ann-no-doubling"):
            await asyncio.wait_for(handle.result(), 30)
    denies = await audit(stack, [hub], action="activity.run", decision="deny")
    assert [(d.principal or {}).get("subject") for d in denies] == ["ann"]
    assert denies[0].resource == {
        "queue": "default",
        "workflow_type": "waits_for_go",
        "activity_type": "double",
        "workflow_id": "late-1",
    }
