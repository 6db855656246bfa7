"""Dead letters: listed with their reason, re-driven once the cause is fixed."""

from __future__ import annotations

import asyncio

import pytest

from immortal import Client, PayloadError
from immortal._codec import encode_args, encode_value
from immortal._inputs import send_input
from immortal._wire import SignalWorkflow, StartWorkflow, encode
from tests.helpers import running_worker
from tests.test_cli import _cli
from tests.test_toolbox import approvals


async def test_a_dead_letter_is_listed_and_redriven(
    nats_url: str, prefix: str, client: Client
) -> None:
    early = SignalWorkflow(
        workflow_id="later", run_id="r-later", name="approve", input=encode_value("ok"),
        signal_id="signal:early",
    )  # fmt: skip
    with pytest.raises(PayloadError, match="unknown run"):  # the run does not exist yet
        await send_input(
            client.nc, client.names, "default", "default", "signal", encode(early),
            msg_id=early.signal_id,
        )  # fmt: skip
    [letter] = await client.dead_letters.list()
    assert letter.kind == "signal" and "unknown run r-later" in letter.error
    listed = await asyncio.to_thread(_cli, nats_url, prefix, "dlq", "list")
    assert "unknown run r-later" in listed.stdout

    start = StartWorkflow(
        workflow_id="later", run_id="r-later", workflow_type="approvals", input=encode_args([1])
    )
    await send_input(
        client.nc, client.names, "default", "default", "start", encode(start), msg_id="s:later"
    )
    async with running_worker(nats_url, prefix, workflows=[approvals]):
        redriven = await asyncio.to_thread(_cli, nats_url, prefix, "dlq", "redrive", "--all")
        assert redriven.returncode == 0, redriven.stderr
        handle = await client.get_handle("later", "r-later")
        assert await handle.result(timeout=20) == ["ok"]
    assert await client.dead_letters.list() == []
