"""Oversized payloads: a typed error that names the limit, at the source, and nothing else hurt."""

from __future__ import annotations

import pytest

import immortal
from immortal import ActivityError, Client, EventType, PayloadError, WorkflowContext
from immortal._codec import MAX_PAYLOAD_BYTES
from tests.helpers import running_worker
from tests.workflows import activities, three_step, workflows

BIG = MAX_PAYLOAD_BYTES + 1


@immortal.activity
async def make_big(n: int) -> str:
    return "y" * n


@immortal.workflow
async def big_result_flow(ctx: WorkflowContext, n: int) -> str:
    try:
        await ctx.activity(make_big, n)
    except ActivityError as exc:
        return f"caught {type(exc.cause).__name__}"
    return "no error"


@immortal.workflow
async def big_argument_flow(ctx: WorkflowContext, n: int) -> str:
    try:
        await ctx.activity(make_big, "x" * n)  # the input, not the result, is too large
    except PayloadError as exc:
        return f"refused: {exc}"
    return "no error"


async def test_oversized_payloads_are_refused_where_they_are_made(
    nats_url: str, prefix: str, client: Client
) -> None:
    kinds = {"workflows": [*workflows, big_result_flow, big_argument_flow]}
    async with running_worker(nats_url, prefix, activities=[*activities, make_big], **kinds):
        with pytest.raises(PayloadError, match="exceeds the payload limit"):
            await client.start(three_step, "x" * BIG)  # a start: refused by the client

        handle = await client.start(big_result_flow, BIG)  # an activity result
        assert await handle.result(timeout=20) == "caught ApplicationError"
        history = await handle.history()
        [failed] = [e for e in history if e.type is EventType.ACTIVITY_FAILED]
        assert failed.attrs["failure"]["type"] == "PayloadError"
        assert failed.attrs["reason"] == "non-retryable error"  # one attempt: retrying can't help
        assert "exceeds the payload limit" in failed.attrs["failure"]["message"]

        refused = await client.start(big_argument_flow, BIG)  # an activity's input
        assert (await refused.result(timeout=20)).startswith("refused: arguments of")

        ok = await client.start(three_step, 3)  # everything else keeps working
        assert await ok.result(timeout=20) == 15
    assert await client.dead_letters.list() == []


async def test_an_input_over_the_servers_max_payload_is_a_payload_error(
    nats_url: str, prefix: str, client: Client
) -> None:
    from immortal._inputs import send_input

    data = b"\x00" * (client.nc.max_payload + 1)
    with pytest.raises(PayloadError, match="exceeds the server's max_payload"):
        await send_input(client.nc, client.names, "default", "q", "start", data, msg_id="x")
