"""The history as a record: a hash chain that `verify` checks, reads from any sequence,
and live following."""

from __future__ import annotations

import asyncio

from immortal import Client, EventType
from immortal._jetstream import read_subject
from immortal._wire import Transition, decode, encode
from tests.helpers import running_worker
from tests.test_cli import _cli
from tests.workflows import three_step


async def _messages(client: Client, handle: object) -> list[tuple[int, bytes]]:
    subject = client.names.history_subject(client.tenant, handle.workflow_id, handle.run_id)  # type: ignore[attr-defined]
    return [
        (m.seq, m.data) async for m in read_subject(client.nc, client.names.stream_history, subject)
    ]


async def test_verify_detects_a_deleted_or_altered_message(
    nats_url: str, prefix: str, client: Client
) -> None:
    async with running_worker(nats_url, prefix):
        handles = [await client.start(three_step, i) for i in range(3)]
        for h in handles:
            await h.result(timeout=20)
    intact, deleted, altered = handles
    assert (await intact.verify()).ok
    js = client.nc.jetstream()
    stream = client.names.stream_history

    messages = await _messages(client, deleted)
    await js.delete_msg(stream, messages[1][0])  # one transition removed by hand
    report = await deleted.verify()
    assert not report.ok
    assert any("chain broken" in p for p in report.problems)
    assert any("missing events" in p for p in report.problems)
    for handle, code in ((intact, 0), (deleted, 1)):
        done = await asyncio.to_thread(
            _cli, nats_url, prefix, "workflow", "verify", handle.workflow_id
        )
        assert done.returncode == code, done.stderr
    assert "chain broken" in done.stderr and "BROKEN" in done.stdout

    messages = await _messages(client, altered)
    seq, data = messages[-1]  # the closing transition, rewritten with another result
    forged = decode(Transition, data)
    forged.events[-1].attrs["result"] = b"\x2a"
    await js.delete_msg(stream, seq)
    subject = client.names.history_subject(client.tenant, altered.workflow_id, altered.run_id)
    await js.publish(subject, encode(forged))
    report = await altered.verify()
    assert not report.ok
    assert any("runs index" in p for p in report.problems)  # the chain's anchor no longer matches


async def test_read_from_a_sequence_and_follow_live(
    nats_url: str, prefix: str, client: Client
) -> None:
    handle = await client.start(three_step, 4)
    followed: list[int] = []

    async def follow() -> None:
        async for _, events in handle.transitions(follow=True):
            followed.extend(e.id for e in events)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the follower is live before any worker runs the code
    async with running_worker(nats_url, prefix):
        assert await handle.result(timeout=20) == 24
        async with asyncio.timeout(10):
            await follower  # it ends by itself at the close
    history = await handle.history()
    assert followed == [e.id for e in history]

    transitions = [t async for t in handle.transitions()]
    middle_seq = transitions[2][0]
    expected = [e for seq, events in transitions if seq >= middle_seq for e in events]
    assert await handle.history(from_seq=middle_seq) == expected  # exactly from there on

    everything = [(seq, run, e.type) async for seq, _, run, e in client.events()]
    assert [s for s, _, _ in everything] == sorted(s for s, _, _ in everything)
    assert {run for _, run, _ in everything} == {handle.run_id}
    tail = [e async for e in client.events(from_seq=middle_seq)]
    assert [e for _, _, _, e in tail] == expected
    assert tail[-1][3].type is EventType.WORKFLOW_COMPLETED


async def test_history_cli_from_a_sequence(nats_url: str, prefix: str, client: Client) -> None:
    async with running_worker(nats_url, prefix):
        handle = await client.start(three_step, 1, id="seqs")
        await handle.result(timeout=20)
    transitions = [t async for t in handle.transitions()]
    third = transitions[2][0]
    done = await asyncio.to_thread(
        _cli, nats_url, prefix, "workflow", "history", "seqs", "--from-seq", str(third)
    )
    assert done.returncode == 0, done.stderr
    header, *printed = [line.split() for line in done.stdout.splitlines()]
    assert header[:4] == ["seq", "workflow", "id", "event"]
    expected = [(seq, e) for seq, events in transitions if seq >= third for e in events]
    assert [(int(p[0]), int(p[2]), p[3]) for p in printed] == [
        (seq, e.id, e.type.value) for seq, e in expected
    ]
