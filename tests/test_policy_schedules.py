"""Schedules decided by the tenant's policy, against a real nats-server with auth on (the
auth callout, a key set served over HTTP, tokens made here): a change is decided by the
hub before it writes anything, the broker refuses a tenant's own writes, and each firing
is decided for the schedule's author."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from immortal import Client, EventType, WorkflowNotFoundError
from immortal._codec import unpack
from immortal._connect import connect
from immortal._names import Names
from immortal.security import PermissionDeniedError, PolicyDeniedError
from immortal_hub import Hub
from tests.helpers import eventually
from tests.security_fixtures import SecureStack, hub_and_worker, secure_stack
from tests.test_keys_cli import immortal, one_line
from tests.test_policy_hub import apply, audit
from tests.workflows import add, double, square, three_step

NAMES = Names("imm")

POLICY = """
tenant: acme
version: {version}
rules:
  - id: r-writers-run
    effect: allow
    roles: [writer]
    actions: [{start}workflow.read, activity.run]
  - id: r-writers-nightly
    effect: allow
    roles: [writer]
    actions: [schedule.create, schedule.read, schedule.pause, schedule.resume]
    resources: {{schedule_id: "nightly-*"}}
  - id: r-admins
    effect: allow
    roles: [admin]
    actions: [schedule.*, workflow.*]
"""


def policy(version: int, *, writers_start: bool = True) -> str:
    return POLICY.format(version=version, start="workflow.start, " if writers_start else "")


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[SecureStack, Hub]]:
    async with secure_stack(tmp_path) as stack:
        activities = [double, square, add]
        async with hub_and_worker(stack, workflows=[three_step], activities=activities) as hub:
            yield stack, hub


async def stored(stack: SecureStack, schedule_id: str) -> dict[str, Any] | None:
    """The schedule's definition as stored, read with the service user's full rights."""
    nc = await nats.connect(stack.url, **stack.admin_nc_options())
    try:
        kv = await nc.jetstream().key_value(NAMES.bucket_schedules)
        try:
            entry = await kv.get(NAMES.schedule_key("acme", schedule_id))
        except KeyNotFoundError:
            return None
        found: dict[str, Any] = unpack(entry.value or b"")
        return found
    finally:
        await nc.close()


async def armed(stack: SecureStack, schedule_id: str) -> bool:
    """Whether the schedule's repeating message is in the timers stream."""
    nc = await nats.connect(stack.url, **stack.admin_nc_options())
    try:
        info = await nc.jetstream().stream_info(NAMES.stream_timers, subjects_filter=">")
        return NAMES.schedule_subject("acme", schedule_id) in (info.state.subjects or {})
    finally:
        await nc.close()


async def test_a_change_is_decided_before_anything_is_written(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    await apply(stack, policy(1), hub)
    async with (
        Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann,
        Client(stack.url, security=stack.security("root", ["acme:admin"])) as root,
    ):
        made = await ann.schedules.create("nightly-1", three_step, 2, every=3600)
        assert made.schedule_id == "nightly-1" and not made.paused
        definition = await stored(stack, "nightly-1")
        assert definition is not None and await armed(stack, "nightly-1")
        # The author, as the hub verified it: claims, never a token.
        author = definition["principal"]
        assert author["subject"] == "ann" and author["roles"] == ["writer"]
        assert "token" not in str(definition).lower()

        with pytest.raises(PolicyDeniedError) as denied:
            await ann.schedules.create("adhoc-1", three_step, 2, every=3600)
        assert str(denied.value) == (
            "denied: no rule allows schedule.create for user ann on schedule adhoc-1 (policy v1)"
        )
        assert await stored(stack, "adhoc-1") is None and not await armed(stack, "adhoc-1")

        # A pause of a schedule the policy gives writers is made; one of another schedule,
        # and a delete (which writers are not given), are refused and change nothing.
        await root.schedules.create("ops-1", three_step, 3, every=3600)
        await ann.schedules.pause("nightly-1")
        assert (await stored(stack, "nightly-1") or {})["paused"] is True
        assert not await armed(stack, "nightly-1")
        with pytest.raises(PolicyDeniedError, match=r"no rule allows schedule.pause for user ann"):
            await ann.schedules.pause("ops-1")
        with pytest.raises(PolicyDeniedError, match=r"no rule allows schedule.delete for user ann"):
            await ann.schedules.delete("nightly-1")
        # A create of an id that exists replaces it: that takes the right to delete it too.
        with pytest.raises(PolicyDeniedError, match=r"no rule allows schedule.delete for user ann"):
            await ann.schedules.create("nightly-1", three_step, 5, every=60)
        assert (await stored(stack, "nightly-1") or {})["every"] == 3600
        assert (await stored(stack, "ops-1") or {})["paused"] is False
        assert await armed(stack, "ops-1") and await stored(stack, "nightly-1") is not None
        assert [s.schedule_id for s in await root.schedules.list()] == ["nightly-1", "ops-1"]
        await root.schedules.delete("nightly-1")
        assert await stored(stack, "nightly-1") is None

    denies = await audit(stack, [hub], decision="deny")
    assert [(d.action, d.resource) for d in denies] == [
        (
            "schedule.create",
            {"queue": "default", "workflow_type": "three_step", "schedule_id": "adhoc-1"},
        ),
        (
            "schedule.pause",
            {"queue": "default", "workflow_type": "three_step", "schedule_id": "ops-1"},
        ),
        (
            "schedule.delete",
            {"queue": "default", "workflow_type": "three_step", "schedule_id": "nightly-1"},
        ),
        (
            "schedule.delete",
            {"queue": "default", "workflow_type": "three_step", "schedule_id": "nightly-1"},
        ),
    ]
    assert all((d.principal or {}).get("subject") == "ann" for d in denies)
    allowed = await audit(stack, [hub], action="schedule.create", decision="allow")
    assert [(a.resource or {})["schedule_id"] for a in allowed] == ["nightly-1", "ops-1"]
    assert allowed[0].rule_ids == ["r-writers-nightly"]


async def test_schedule_reads_are_decided(running: tuple[SecureStack, Hub]) -> None:
    stack, hub = running
    await apply(stack, policy(1), hub)
    async with (
        Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann,
        Client(stack.url, security=stack.security("rita", ["acme:reader"])) as rita,
    ):
        await ann.schedules.create("nightly-r", three_step, 1, every=3600)
        assert (await ann.schedules.get("nightly-r")).workflow_type == "three_step"
        # A listing reads every schedule of the tenant: a rule on some schedules' ids
        # does not allow it.
        with pytest.raises(PermissionDeniedError, match=r"schedule.read for user ann on sched"):
            await ann.schedules.list()
        with pytest.raises(PermissionDeniedError, match=r"schedule.read for user rita"):
            await rita.schedules.list()
        with pytest.raises(PermissionDeniedError, match="on schedule nightly-r"):
            await rita.schedules.get("nightly-r")


async def test_the_broker_refuses_a_writers_own_schedule_writes(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, _ = running  # no policy: roles decide, and a writer still asks a hub
    writer = stack.security("wally", ["acme:writer"])
    async with Client(stack.url, security=writer) as wally:
        await wally.schedules.create("w-1", three_step, 1, every=3600)
        before = await stored(stack, "w-1")
    nc = await connect(stack.url, name="wally", security=writer)
    try:
        js = nc.jetstream()
        forged = {**(before or {}), "workflow_type": "something_else"}
        with pytest.raises(Exception):  # noqa: B017 - refused by the broker: no ack comes
            await js.publish(
                f"$KV.{NAMES.bucket_schedules}.acme.w-1", repr(forged).encode(), timeout=1
            )
        with pytest.raises(Exception):  # noqa: B017 - the same for the scheduled message
            await js.publish(NAMES.schedule_subject("acme", "w-2"), b"", timeout=1)
    finally:
        await nc.close()
    assert await stored(stack, "w-1") == before
    assert not await armed(stack, "w-2")
    # A reader may not even ask: the broker refuses the request, at once.
    async with Client(stack.url, security=stack.security("rita", ["acme:reader"])) as rita:
        with pytest.raises(PermissionDeniedError, match=r"imm\.schedules\.acme"):
            await rita.schedules.pause("w-1")
    assert (await stored(stack, "w-1") or {})["paused"] is False


async def test_a_denied_change_is_one_line_at_the_cli(running: tuple[SecureStack, Hub]) -> None:
    stack, hub = running
    await apply(stack, policy(1), hub)
    token = stack.security("ann", ["acme:writer"]).token
    assert token is not None
    create = ("schedule", "create", "adhoc-2", "three_step", "1", "--every", "60")
    done = await immortal(stack, token(), *create)
    assert done.returncode == 2
    assert one_line(done) == (
        "error: denied: no rule allows schedule.create for user ann on schedule adhoc-2 (policy v1)"
    )
    assert await stored(stack, "adhoc-2") is None
    made = await immortal(stack, token(), "schedule", "create", "nightly-2", "three_step", "1")
    assert made.returncode == 2 and "exactly one of every= or cron=" in made.stderr


async def test_firings_are_decided_for_the_author_and_stop_when_its_right_is_revoked(
    running: tuple[SecureStack, Hub],
) -> None:
    stack, hub = running
    await apply(stack, policy(1), hub)
    async with Client(stack.url, security=stack.security("ann", ["acme:writer"])) as ann:
        await ann.schedules.create("nightly-fire", three_step, 2, every=1)

        async def fired_runs() -> list[str]:
            page = await ann.list_workflows(status="closed", limit=100)
            return [r.workflow_id for r in page.runs if r.workflow_id.startswith("nightly-fire@")]

        [first, *_] = await eventually(fired_runs)
        run = await ann.get_handle(first)
        assert await run.result() == 8
        decision = next(e for e in await run.history() if e.type is EventType.POLICY_DECISION)
        assert decision.attrs["allow"] is True and decision.attrs["rule_ids"] == ["r-writers-run"]
        starts = await audit(stack, [hub], action="workflow.start", decision="allow")
        assert (starts[0].principal or {}).get("subject") == "ann"
        assert (starts[0].resource or {})["schedule_id"] == "nightly-fire"
        # The run acts for the author: its activities are decided for ann.
        acts = await audit(stack, [hub], action="activity.run", decision="allow")
        mine = [a for a in acts if (a.resource or {}).get("workflow_id") == first]
        assert len(mine) == 3 and {(a.principal or {}).get("subject") for a in mine} == {"ann"}

        await apply(stack, policy(2, writers_start=False), hub)  # ann may start no more

        async def refused() -> list[Any]:
            found = await audit(stack, [hub], action="workflow.start", decision="deny")
            return found if len(found) >= 2 else []

        denies = await eventually(refused)
        for deny in denies:
            assert (deny.principal or {}).get("subject") == "ann"
            assert (deny.resource or {})["schedule_id"] == "nightly-fire"
            assert deny.policy_version == 2
            assert "no rule allows workflow.start for user ann" in deny.message
            with pytest.raises(WorkflowNotFoundError):  # a denied firing starts no run
                await (await ann.get_handle((deny.resource or {})["workflow_id"])).describe()
