"""Live notifications and direct reads follow the tenant's policy, against a real
nats-server with auth on: a principal the policy lets read only some runs is granted
neither ``imm.hist.<t>.>`` / ``imm.log.<t>.>`` nor the direct gets of those streams, and
reads (and follows, and awaits results) through the hubs' read relay, decided per run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from immortal import Client, EventType
from immortal._jetstream import live_subscribe
from immortal._names import Names
from immortal.policy import BuiltinEngine, PolicyPrincipal, parse_policy, reads_every_run
from immortal.security import PermissionDeniedError, Principal, grants_for
from immortal_hub import Hub
from tests.security_fixtures import SecureStack
from tests.test_policy_hub import apply, running, stack  # noqa: F401 - fixtures
from tests.workflows import three_step, waits_for_go

OWNERS = """
tenant: acme
version: 1
relations:
  - user:rita owner workflow:mine-1
  - user:rita owner workflow:mine-2
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*, logs.read]
  - id: r-owners-read
    effect: allow
    relation: principal owner resource.workflow
    actions: [workflow.read, logs.read]
"""


HIST, LOGS = Names("imm").stream_history, Names("imm").stream_logs


async def _nothing(_: Any) -> None:
    return None


@pytest.mark.parametrize("stack", ["builtin"], indirect=True)
async def test_a_reader_of_some_runs_follows_them_through_the_relay_and_no_others(
    running: tuple[SecureStack, Hub],  # noqa: F811
) -> None:
    secure, hub = running
    await apply(secure, OWNERS, hub)  # before anyone connects: grants are decided at connect
    async with Client(secure.url, security=secure.security("ann", ["acme:writer"])) as ann:
        for wid in ("mine-1", "other-1"):
            assert (
                await asyncio.wait_for((await ann.start(three_step, 1, id=wid)).result(), 30) == 3
            )
        # Ann may read every run: she keeps the live subjects.
        assert await live_subscribe(ann.nc, HIST, "imm.hist.acme.>", _nothing) is not None
        waiting_run = await ann.start(waits_for_go, 2, id="mine-2")

        async with Client(secure.url, security=secure.security("rita", ["acme:reader"])) as rita:
            # Rita may read two runs only: the broker refuses her the tenant's live subjects.
            assert await live_subscribe(rita.nc, HIST, "imm.hist.acme.>", _nothing) is None
            assert await live_subscribe(rita.nc, LOGS, "imm.log.acme.>", _nothing) is None
            # Her own runs: found, read and awaited through the relay.
            mine = await rita.get_handle("mine-1")
            assert mine.run_id == (await ann.get_handle("mine-1")).run_id
            assert await asyncio.wait_for(mine.result(), 30) == 3
            assert (await mine.history())[0].type is EventType.WORKFLOW_STARTED
            # The same log lines as a reader of every run sees (allowed: no refusal).
            ann_lines = [line.seq async for line in (await ann.get_handle("mine-1")).logs()]
            assert [line.seq async for line in mine.logs()] == ann_lines
            # A run in flight: her result() follows it to its end by reads.
            live = await rita.get_handle("mine-2")
            result = asyncio.create_task(live.result())
            await asyncio.sleep(0.3)
            assert not result.done()
            await waiting_run.signal("go")
            assert await asyncio.wait_for(result, 30) == 8
            # Someone else's run: refused with the policy's reason, whichever way she asks.
            with pytest.raises(PermissionDeniedError, match=r"no rule allows workflow\.read"):
                await rita.get_handle("other-1")
            other = await rita.get_handle("other-1", (await ann.get_handle("other-1")).run_id)
            with pytest.raises(PermissionDeniedError, match=r"no rule allows workflow\.read"):
                await other.result()
            with pytest.raises(PermissionDeniedError, match=r"no rule allows logs\.read"):
                _ = [line async for line in other.logs()]


def test_withheld_reads_leave_the_live_subjects_and_direct_gets_out() -> None:
    names = Names("imm")
    reader = Principal(subject="r", tenant="T", roles=frozenset({"reader"}), pid="PID")
    full = grants_for(reader, names)
    narrowed = grants_for(reader, names, withheld=("workflow.read", "logs.read"))
    gone = {
        "imm.hist.T.>",
        "imm.log.T.>",
        f"$JS.API.DIRECT.GET.{names.stream_history}.imm.hist.T.>",
        f"$JS.API.DIRECT.GET.{names.stream_logs}.imm.log.T.>",
        f"$JS.API.DIRECT.GET.{names.stream_runs}.imm.runs.T.>",
    }
    assert gone <= {*full.pub, *full.sub}
    assert not gone & {*narrowed.pub, *narrowed.sub}
    assert names.read_subject("T", "PID") in narrowed.pub  # the relay stays
    # A worker reads the runs of the queues it serves: nothing is withheld from it.
    worker = Principal(
        subject="w", tenant="T", roles=frozenset({"worker"}), queues=("Q",), pid="PID"
    )
    assert grants_for(worker, names, withheld=("workflow.read",)) == grants_for(worker, names)


READERS = """
tenant: acme
version: 2
relations:
  - user:olga owner workflow:w-1
rules:
  - {id: r-all, effect: allow, roles: [writer], actions: [workflow.read]}
  - {id: r-ops, effect: allow, groups: [ops], actions: [workflow.read]}
  - {id: r-not-secret, effect: deny, groups: [ops], actions: [workflow.read], resources: {workflow_id: "secret-*"}}
  - {id: r-public, effect: allow, roles: [reader], actions: [workflow.read], resources: {workflow_id: "public-*"}}
  - {id: r-day, effect: allow, groups: [day], actions: [workflow.read], when: "9 <= context.hour < 18"}
  - {id: r-owner, effect: allow, relation: principal owner resource.workflow, actions: [workflow.read]}
  - {id: r-clearance, effect: allow, groups: [cleared], actions: [workflow.read], when: principal.attributes.level >= 3}
"""


@pytest.mark.parametrize(
    ("who", "every_run"),
    [
        (PolicyPrincipal(subject="w", tenant="acme", roles=("writer",)), True),
        # Allowed everywhere but one deny rule names them: it may refuse some run.
        (PolicyPrincipal(subject="o", tenant="acme", groups=("ops",)), False),
        (PolicyPrincipal(subject="r", tenant="acme", roles=("reader",)), False),  # a pattern
        (PolicyPrincipal(subject="d", tenant="acme", groups=("day",)), False),  # the time
        (PolicyPrincipal(subject="olga", tenant="acme"), False),  # a relation to one run
        (
            PolicyPrincipal(
                subject="c", tenant="acme", groups=("cleared",), attributes={"level": 4}
            ),
            True,
        ),
        (
            PolicyPrincipal(
                subject="c", tenant="acme", groups=("cleared",), attributes={"level": 1}
            ),
            False,
        ),
        (PolicyPrincipal(subject="w", tenant="beta", roles=("writer",)), False),  # another tenant
    ],
)
def test_reads_every_run_only_when_nothing_about_the_run_could_refuse(
    who: PolicyPrincipal, every_run: bool
) -> None:
    policy = BuiltinEngine(parse_policy(READERS)).policy
    assert reads_every_run(policy, who, "workflow.read") is every_run
    assert reads_every_run(policy, who, "logs.read") is False  # no rule covers it


NO_SECRETS = """
tenant: acme
version: 1
rules:
  - {id: r-writers, effect: allow, roles: [writer], actions: ["workflow.*", logs.read]}
  - {id: r-ops, effect: allow, groups: [ops], actions: [workflow.read]}
  - {id: r-no-secrets, effect: deny, groups: [ops], actions: [workflow.read], resources: {workflow_id: "secret-*"}}
"""


@pytest.mark.parametrize("stack", ["builtin"], indirect=True)
async def test_a_read_across_runs_needs_every_run_not_just_some(
    running: tuple[SecureStack, Hub],  # noqa: F811
) -> None:
    secure, hub = running
    await apply(secure, NO_SECRETS, hub)
    async with Client(secure.url, security=secure.security("ann", ["acme:writer"])) as ann:
        for wid in ("plain-1", "secret-1"):
            assert (
                await asyncio.wait_for((await ann.start(three_step, 1, id=wid)).result(), 30) == 3
            )
        seen = {wid async for _, wid, _, _ in ann.events()}
        assert seen == {"plain-1", "secret-1"}  # a reader of every run reads them in bulk
    ops = secure.security("otto", ["acme:reader"], groups=["ops"])
    async with Client(secure.url, security=ops) as otto:
        assert (await (await otto.get_handle("plain-1")).history())[
            0
        ].type is EventType.WORKFLOW_STARTED
        with pytest.raises(PermissionDeniedError, match=r"\(rule r-no-secrets, policy v1\)"):
            await otto.get_handle("secret-1")
        # In bulk, the secret run would come along: refused, with why.
        with pytest.raises(
            PermissionDeniedError, match=r"workflow\.read of every run of tenant acme"
        ):
            _ = [e async for e in otto.events()]
        with pytest.raises(
            PermissionDeniedError, match=r"workflow\.read of every run of tenant acme"
        ):
            await otto.list_workflows()
