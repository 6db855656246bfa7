"""A start that waited in ``IMM_IN`` (no hub answered) and is refused by the tenant's
policy once a hub applies it: its sender's ``result()`` ends with the refusal, and no run
exists. Against a real nats-server with auth on and a tenant policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from immortal import Client, WorkflowNotFoundError
from immortal._jetstream import last_message
from immortal.security import PermissionDeniedError, PolicyDeniedError
from immortal.security.connection import sender_of
from immortal_hub import Hub
from tests.security_fixtures import secure_stack
from tests.test_policy_hub import apply, audit
from tests.workflows import three_step

ONLY_REFUNDS = """
tenant: acme
version: 3
rules:
  - id: r-writers-refunds
    effect: allow
    roles: [writer]
    actions: [workflow.start]
    resources: {workflow_type: "refund*"}
  - id: r-writers-read
    effect: allow
    roles: [writer]
    actions: [workflow.read]
"""


async def test_a_start_refused_after_it_waited_in_imm_in_ends_its_result(
    tmp_path: Path,
) -> None:
    async with secure_stack(tmp_path) as stack:
        hub = Hub(stack.url, security=stack.hub_security())
        await hub.start()
        try:
            await apply(stack, ONLY_REFUNDS, hub)
            ann = stack.security("ann", ["acme:writer"])
            async with Client(stack.url, security=ann) as client:
                # The hub is busy for acme: the start is durable in IMM_IN, start() returns.
                held = 0
                while hub.admission.try_enter("acme"):
                    held += 1
                handle = await client.start(three_step, 1, id="queued-1")
                waiting = asyncio.create_task(handle.result())
                await asyncio.sleep(0.2)
                assert not waiting.done()
                for _ in range(held):
                    hub.admission.release("acme")
                with pytest.raises(PolicyDeniedError) as refused:
                    await asyncio.wait_for(waiting, 30)
                assert str(refused.value) == (
                    "denied: no rule allows workflow.start for user ann on workflows of type "
                    "three_step (policy v3)"
                )
                assert refused.value.policy_version == 3 and refused.value.rule_ids == ()
                # Asked again later, the handle says the same at once; and there is no run.
                with pytest.raises(PolicyDeniedError, match=r"no rule allows workflow\.start"):
                    await asyncio.wait_for(handle.result(), 10)
                assert await client.workflow_runs("queued-1") == []
                with pytest.raises(WorkflowNotFoundError):
                    await client.get_handle("queued-1")
                denies = await audit(stack, [hub], action="workflow.start", decision="deny")
                assert [d.message for d in denies] == [str(refused.value)]
                ann_pid = sender_of(client.nc)
            assert hub.refused["acme"] >= 1  # it was answered busy: the durable path
            # Another principal of the tenant may not read ann's refusals (the broker says so).
            bob = stack.security("bob", ["acme:writer"])
            async with Client(stack.url, security=bob) as other:
                subject = other.names.refusal_subject("acme", ann_pid, handle.run_id)
                with pytest.raises(PermissionDeniedError, match="not permitted"):
                    await last_message(other.nc, other.names.stream_audit, subject, relay=False)
        finally:
            await hub.stop()
