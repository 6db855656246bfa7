"""A signal is never lost for a run whose start is durable: sent before any hub applied the
start, it waits for the start and is recorded after it, in the order sent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import immortal
import immortal._claims
from immortal import Client, EventType, WorkflowContext, WorkflowNotFoundError
from immortal._codec import decode_value
from immortal._inputs import send_input
from immortal._wire import SignalWorkflow, encode
from tests.helpers import running_hub, running_worker
from tests.procs import start_hub


@immortal.workflow
async def collects(ctx: WorkflowContext, n: int) -> list[str]:
    return [str(await ctx.wait_signal("add")) for _ in range(n)]


def _cli(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", "workflow", *args, "-s", url, "--prefix", prefix],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_signals_sent_while_no_hub_runs_reach_the_run_in_order(
    nats_url: str, prefix: str, test_dir: Path
) -> None:
    hub = await start_hub(nats_url, prefix)  # a hub made the streams, then went away
    await hub.stop()
    async with (
        Client(nats_url, prefix=prefix) as client,
        Client(nats_url, prefix=prefix) as other,
        running_worker(nats_url, prefix, workflows=[collects]),
    ):
        handle = await client.start(collects, 3, id="k2")  # queued in IMM_IN: durable
        assert await handle.history() == []
        sent = await asyncio.to_thread(_cli, nats_url, prefix, "signal", "k2", "add", '"first"')
        assert sent.returncode == 0, sent.stderr  # by workflow id, from another process
        await (await other.get_handle("k2")).signal("add", "second")  # another client, by id
        await handle.signal("add", "third")  # the handle start() gave
        with pytest.raises(WorkflowNotFoundError):  # nothing queued for that one
            await (await other.get_handle("k2", "no-such-run")).signal("add", "x")
        with pytest.raises(WorkflowNotFoundError):
            await other.get_handle("never-started")

        hub = await start_hub(nats_url, prefix)
        try:
            assert await handle.result(timeout=30) == ["first", "second", "third"]
        finally:
            await hub.stop()
        history = await handle.history()
        assert (await client.dead_letters.list()) == []
    assert history[0].type is EventType.WORKFLOW_STARTED  # the signals come after the start
    signals = [e for e in history if e.type is EventType.WORKFLOW_SIGNALED]
    assert [decode_value(e.attrs["input"]) for e in signals] == ["first", "second", "third"]


async def test_a_signal_by_id_goes_to_the_newer_run_queued_behind_a_closed_one(
    nats_url: str, prefix: str
) -> None:
    async with Client(nats_url, prefix=prefix) as client:
        async with (
            running_hub(nats_url, prefix),
            running_worker(nats_url, prefix, workflows=[collects]),
        ):
            first = await client.start(collects, 1, id="reused")
            await first.signal("add", "once")
            assert await first.result(timeout=20) == ["once"]
        # No hub: the id's next run waits in IMM_IN; the id's newest run in history is closed.
        second = await client.start(collects, 1, id="reused")
        by_id = await client.get_handle("reused")
        assert by_id.run_id == first.run_id  # describe and history show what exists
        await by_id.signal("add", "again")  # ...but the signal goes to the queued run
        assert by_id.run_id == second.run_id
        async with (
            running_hub(nats_url, prefix),
            running_worker(nats_url, prefix, workflows=[collects]),
        ):
            assert await second.result(timeout=20) == ["again"]
        with pytest.raises(immortal.WorkflowClosedError):  # both closed now: nothing waits
            await (await client.get_handle("reused")).signal("add", "late")


async def test_a_signal_whose_start_never_comes_is_dead_lettered_not_lost(
    nats_url: str, prefix: str
) -> None:
    async with (
        Client(nats_url, prefix=prefix) as client,
        running_hub(nats_url, prefix, start_wait=1.5),
    ):
        # As a client that saw a start queued would send it, for a start that then vanished
        # (say, an operator purged IMM_IN). The start had registered its queue.
        await client._register_queue("default")
        body = SignalWorkflow(
            workflow_id="ghost",
            run_id="r-ghost",
            name="add",
            input=b"\xa1x",
            signal_id="signal:lost-start",
            pending_start=True,
        )
        await send_input(
            client.nc, client.names, client.tenant, "default", "signal", encode(body),
            msg_id=body.signal_id,
        )  # fmt: skip
        async with asyncio.timeout(20):
            while not (dead := await client.dead_letters.list()):
                await asyncio.sleep(0.2)
    [letter] = dead
    assert "signal 'add' for run r-ghost, whose start is not applied yet" in letter.error
    assert "waited" in letter.error and letter.redrivable


async def test_a_queued_start_keeps_its_workflow_id(
    nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimed id whose start never reached history is taken over as abandoned; one whose
    start waits in IMM_IN for a hub is not abandoned: it is durable."""
    monkeypatch.setattr(immortal._claims, "_ABANDONED_CLAIM_MS", 0)
    async with running_hub(nats_url, prefix):
        pass  # the streams exist; no hub runs from here
    async with Client(nats_url, prefix=prefix) as client:
        first = await client.start(collects, 1, id="kept")
        with pytest.raises(immortal.WorkflowAlreadyStartedError, match="kept"):
            await client.start(collects, 1, id="kept")
        same = await client.start(
            collects, 1, id="kept", id_reuse_policy=immortal.IdReusePolicy.RETURN_EXISTING
        )
        assert same.run_id == first.run_id
