"""A rule on an input field the hub cannot read (the input is encrypted) refuses the
request instead of being skipped, against a real nats-server with auth on and a tenant
policy: ``deny when input.amount > 10000`` cannot be slipped past by sealing the input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from immortal import ApplicationError, Client, EventType, PayloadError, WorkflowFailedError
from immortal._codec import encode_args
from immortal._inputs import send_input
from immortal._wire import StartWorkflow, encode
from immortal.codec import AesGcmCodec, Binding, KeyRing
from immortal.codec._fields import INPUT
from immortal.codec._sealing import seal
from immortal.security import PolicyDeniedError
from immortal_hub import Hub
from tests.security_fixtures import SecureStack, hub_and_worker, secure_stack
from tests.test_policy_hub import ENGINES, apply, audit, refund
from tests.workflows import double

KEY = bytes(range(32))

LIMITS = """
tenant: acme
version: 1
rules:
  - id: r-staff-start
    effect: allow
    groups: [staff]
    actions: [workflow.start, workflow.read]
  - id: r-clerk-start
    effect: allow
    groups: [clerks]
    actions: [workflow.start]
    when: input.amount <= 10000
  - id: r-clerk-limit
    effect: deny
    groups: [clerks]
    actions: [workflow.start]
    when: input.amount > 10000
  - id: r-clerk-read
    effect: allow
    groups: [clerks]
    actions: [workflow.read]
"""


def _codec() -> AesGcmCodec:
    return AesGcmCodec(KeyRing({"k1": KEY}, current="k1"))


@pytest.fixture(params=ENGINES)
async def sealed_stack(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SecureStack, Hub]]:
    async with secure_stack(tmp_path) as stack:
        async with hub_and_worker(
            stack, workflows=[refund], activities=[double], engine=request.param, codec=_codec()
        ) as hub:
            yield stack, hub


async def test_a_deny_rule_on_a_sealed_input_field_fails_closed_and_says_why(
    sealed_stack: tuple[SecureStack, Hub],
) -> None:
    stack, hub = sealed_stack
    await apply(stack, LIMITS, hub)
    clerk = stack.security("carl", ["acme:writer"], groups=["clerks"])
    async with Client(stack.url, security=clerk, codec=_codec()) as carl:
        with pytest.raises(PolicyDeniedError) as refused:
            await carl.start(refund, {"amount": 12_000}, id="sealed-big")
        assert str(refused.value) == (
            "denied: rule r-clerk-limit reads input.amount, but the input is encrypted and "
            "the hub holds no key (policy v1)"
        )
        assert refused.value.rule_ids == ("r-clerk-limit",)
        # Sealed, a small amount is refused too: the hub cannot tell it from a large one.
        with pytest.raises(PolicyDeniedError, match=r"reads input\.amount, but the input is enc"):
            await carl.start(refund, {"amount": 500}, id="sealed-small")
        assert await carl.workflow_runs("sealed-big") == []
        assert await carl.workflow_runs("sealed-small") == []
    # In plaintext the same clerk is decided on the amount.
    async with Client(stack.url, security=clerk) as carl:
        await carl.start(refund, {"amount": 500}, id="plain-small")
    async with Client(stack.url, security=clerk, codec=_codec()) as carl:
        handle = await carl.get_handle("plain-small")  # the worker sealed its result
        assert await asyncio.wait_for(handle.result(), 30) == "refunded 500"
    # Staff, whom no rule on the input covers, starts sealed runs as before.
    async with Client(
        stack.url, security=stack.security("wes", ["acme:writer"], groups=["staff"]), codec=_codec()
    ) as wes:
        handle = await wes.start(refund, {"amount": 12_000}, id="sealed-writer")
        assert await asyncio.wait_for(handle.result(), 30) == "refunded 12000"
    denies = await audit(stack, [hub], action="workflow.start", decision="deny")
    assert [d.resource["workflow_id"] for d in denies if d.resource] == [
        "sealed-big",
        "sealed-small",
    ]
    assert all(d.rule_ids == ["r-clerk-limit"] and "encrypted" in d.message for d in denies)


async def test_revealed_fields_let_the_policy_decide_and_the_worker_holds_them_to_it(
    sealed_stack: tuple[SecureStack, Hub],
) -> None:
    stack, hub = sealed_stack
    await apply(stack, LIMITS, hub)
    clerk = stack.security("carl", ["acme:writer"], groups=["clerks"])
    async with Client(stack.url, security=clerk, codec=_codec()) as carl:
        # Revealed, the amount decides: a small one runs, a large one is refused by the
        # limit, with the limit's own reason.
        small = await carl.start(
            refund, {"amount": 500}, id="shown-small", policy_input={"amount": 500}
        )
        assert await asyncio.wait_for(small.result(), 30) == "refunded 500"
        started = (await small.history())[0]
        assert started.attrs["policy_input"] == {"amount": 500}  # recorded, in plaintext
        with pytest.raises(PolicyDeniedError) as refused:
            await carl.start(
                refund, {"amount": 12_000}, id="shown-big", policy_input={"amount": 12_000}
            )
        assert str(refused.value).startswith("denied: input.amount 12,000 exceeds the 10,000 limit")
        # The client refuses to reveal what the input does not say.
        with pytest.raises(PayloadError, match=r"reveals amount as 500, but the input has 12000"):
            await carl.start(refund, {"amount": 12_000}, id="lie", policy_input={"amount": 500})

        # A sender that lies anyway (not through Client.start): the policy allows on the
        # revealed 500, and the worker fails the run before the workflow code runs.
        run_id = uuid.uuid4().hex
        body = StartWorkflow(
            workflow_id="forged",
            run_id=run_id,
            workflow_type="refund",
            input=seal(
                _codec(),
                Binding("acme", "forged", run_id, INPUT),
                encode_args([{"amount": 12_000}]),
            ),
            policy_input={"amount": 500},
        )
        await send_input(
            carl.nc, carl.names, "acme", "default", "start", encode(body), msg_id=f"start:{run_id}"
        )
        forged = await carl.get_handle("forged", run_id)
        with pytest.raises(WorkflowFailedError) as failed:
            await asyncio.wait_for(forged.result(), 30)
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "PolicyInputMismatch"
        assert cause.message == "policy_input reveals amount as 500, but the input has 12000"
        assert cause.non_retryable
        kinds = [e.type for e in await forged.history()]
        assert EventType.ACTIVITY_SCHEDULED not in kinds  # no workflow code ran
