"""Encrypted payloads (issue 17) against a real nats-server: nothing readable in the
streams without the key ring, ciphertexts bound to their run, keys rotated in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from immortal import Client, EventType, WorkflowFailedError
from immortal._codec import unpack
from immortal._inputs import send_input
from immortal._wire import SignalWorkflow, StartWorkflow, decode, encode
from immortal.codec import (
    AesGcmCodec,
    KeyNotInRingError,
    KeyRing,
    is_sealed,
    key_id_of,
    reveal_events,
    reveal_log,
)
from immortal_hub import Hub
from immortal_worker import Worker
from tests.codec_workflows import (
    MARK,
    activities,
    enc_catches,
    enc_fails,
    enc_parent,
    enc_quick_flow,
    enc_waits,
    workflows,
)
from tests.helpers import running_worker, wait_for_history
from tests.security_fixtures import secure_stack

K1, K2 = bytes(range(32)), bytes(range(32, 64))


def codec(current: str = "k1", **keys: bytes) -> AesGcmCodec:
    return AesGcmCodec(KeyRing(keys or {"k1": K1}, current=current))


Seen = list[tuple[str, dict[str, str], bytes]]


@asynccontextmanager
async def _capture(nats_url: str, prefix: str, **login: Any) -> AsyncIterator[Seen]:
    """Every message published under the prefix, as it went by (inputs and tasks leave
    their work-queue streams once taken, so they are caught on the way)."""
    seen: Seen = []
    nc = NATS()
    await nc.connect(nats_url, **login)

    async def keep(msg: Any) -> None:
        seen.append((msg.subject, dict(msg.headers or {}), msg.data))

    await nc.subscribe(f"{prefix}.>", cb=keep)
    await nc.flush()
    try:
        yield seen
    finally:
        await nc.drain()


def _raw(headers: dict[str, str], data: bytes) -> bytes:
    return "".join(f"{k}:{v}" for k, v in headers.items()).encode() + data


async def _stored(nc: NATS, stream: str) -> list[bytes]:
    """What ``stream`` still stores, raw."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except Exception:  # deleted (a work queue's taken message)
            continue
        out.append(_raw(dict(msg.headers or {}), msg.data or b""))
    return out


async def _run_everything(client: Client) -> tuple[str, str]:
    handle = await client.start(enc_parent, MARK, id=f"enc-{MARK[-4:]}")
    # The run continues as new at once; signal the run that waits.
    for _ in range(200):
        newest = await client.get_handle(handle.workflow_id)
        if newest.run_id != handle.run_id and await newest.status() is not None:
            break
        await asyncio.sleep(0.05)
    await newest.signal("go", f"go-{MARK}")
    result = await handle.result(timeout=30)
    failed = await client.start(enc_fails, MARK)
    with pytest.raises(WorkflowFailedError) as caught:
        await failed.result(timeout=20)
    assert caught.value.cause.type == "Refusal"
    assert caught.value.cause.message == f"workflow fails holding {MARK}"
    assert caught.value.cause.details == MARK
    return result, newest.run_id


@pytest.mark.timeout(90)
@pytest.mark.parametrize("encrypt", [True, False], ids=["encrypted", "plain-control"])
async def test_no_plaintext_in_any_stream(
    nats_url: str, prefix: str, hub: Hub, encrypt: bool
) -> None:
    """With encryption on, the marker is in no message of IMM_HISTORY, IMM_IN, IMM_TASKS or
    IMM_LOGS, as published or as stored; the control run without it finds the marker in
    all four, so the search can fail."""
    c = codec() if encrypt else None
    async with (
        _capture(nats_url, prefix) as seen,
        Client(nats_url, prefix=prefix, codec=c) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=c),
    ):
        result, _ = await _run_everything(client)
        await asyncio.sleep(0.5)  # the last log lines reach the stream
        names = client.names
        stored = {s: await _stored(client.nc, s) for s in
                  (names.stream_history, names.stream_in, names.stream_tasks, names.stream_logs)}  # fmt: skip
    _assert_no_plaintext(prefix, result, seen, stored, encrypt=encrypt)


def _assert_no_plaintext(
    prefix: str, result: str, seen: Seen, stored: dict[str, list[bytes]], *, encrypt: bool
) -> None:
    assert result == (
        f"worked {MARK}/go-{MARK} after {{'progress': 'half of {MARK}/go-{MARK}'}} "
        f"| child of {MARK} | go-{MARK}"
    )
    families = {f"{prefix}.{k}." for k in ("hist", "in", "task", "log")}
    caught = {f: [_raw(h, d) for s, h, d in seen if s.startswith(f)] for f in families}
    assert all(caught.values()), {f: len(v) for f, v in caught.items()}  # all four were seen
    marked = {f: sum(MARK.encode() in d for d in v) for f, v in caught.items()}
    marked_stored = {s: sum(MARK.encode() in d for d in v) for s, v in stored.items()}
    if encrypt:
        assert set(marked.values()) == {0}, marked
        assert set(marked_stored.values()) == {0}, marked_stored
        assert any(is_sealed(d) or b"\xc1IE" in d for d in caught[f"{prefix}.hist."])
    else:
        assert all(marked.values()), marked


@pytest.mark.timeout(60)
async def test_history_decrypts_with_the_ring_and_says_so_without(
    nats_url: str, prefix: str, hub: Hub
) -> None:
    async with (
        Client(nats_url, prefix=prefix, codec=codec()) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=codec()),
    ):
        failed = await client.start(enc_fails, MARK)
        with pytest.raises(WorkflowFailedError):
            await failed.result(timeout=20)
        events = await failed.history()
    opened = reveal_events(events, codec(), client.tenant, failed.workflow_id, failed.run_id)
    closed = opened[-1]
    assert closed.type is EventType.WORKFLOW_FAILED
    assert closed.attrs["failure"]["message"] == f"workflow fails holding {MARK}"
    assert closed.attrs["failure"]["type"] == "Refusal"  # plain all along: the hub's to read
    assert events[-1].attrs["failure"]["type"] == "Refusal"
    assert events[-1].attrs["failure"]["message"] == "<encrypted (key k1)>"
    blind = reveal_events(events, None, client.tenant, failed.workflow_id, failed.run_id)
    assert blind[0].attrs["input"] == "<encrypted (key k1)>"
    other = reveal_events(
        events, codec("k2", k2=K2), client.tenant, failed.workflow_id, failed.run_id
    )
    assert other[0].attrs["input"] == "<encrypted: key k1 not in ring>"
    assert other[-1].attrs["failure"]["message"] == "<encrypted: key k1 not in ring>"


@pytest.mark.timeout(60)
async def test_ciphertext_moved_to_another_run_is_refused(
    nats_url: str, prefix: str, hub: Hub
) -> None:
    """A signal payload sealed for run A, sent to run B (as anyone who can publish inputs
    could), is refused by B's worker and dropped with a line in B's log naming why; B goes
    on and completes with its own signal. A start whose input is A's ciphertext fails."""
    c = codec()
    async with (
        Client(nats_url, prefix=prefix, codec=c) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=c),
    ):
        a = await client.start(enc_waits, "A")
        b = await client.start(enc_waits, "B")
        async with _capture(nats_url, prefix) as seen:
            await a.signal("go", "for A only")
            await client.nc.flush()
            await asyncio.sleep(0.2)
        assert await a.result(timeout=20) == "A: for A only"
        sent = next(d for s, _, d in seen if ".signal." in s)  # by request, or to IMM_IN
        stolen = decode(SignalWorkflow, sent)
        assert is_sealed(stolen.input)
        # Run B gets A's ciphertext as its "go" signal (a raw input: any sender can), then
        # its own.
        moved = stolen.model_copy(
            update={"workflow_id": b.workflow_id, "run_id": b.run_id, "signal_id": "signal:moved"}
        )
        await send_input(
            client.nc, client.names, client.tenant, "default", "signal", encode(moved),
            msg_id="signal:moved",
        )  # fmt: skip
        await wait_for_history(
            client, b.workflow_id, b.run_id,
            lambda h: sum(e.type is EventType.WORKFLOW_TASK_COMPLETED for e in h) >= 2,
        )  # fmt: skip
        await b.signal("go", "for B")
        assert await b.result(timeout=20) == "B: for B"
        await asyncio.sleep(0.5)  # the log line reaches the stream
        lines = [line async for line in b.logs()]
    assert not any("refused" in ln.message for ln in lines)  # sealed like any line
    opened = [reveal_log(ln, c, client.tenant).message for ln in lines]
    assert any(
        "signal 'go'" in m and "refused and dropped" in m and "signal:go" in m for m in opened
    ), opened


@pytest.mark.timeout(60)
async def test_start_with_a_moved_input_fails_visibly(nats_url: str, prefix: str, hub: Hub) -> None:
    """A start carrying another run's sealed input fails with the codec's refusal, naming
    the field; the run it was taken from is untouched."""
    c = codec()
    async with (
        Client(nats_url, prefix=prefix, codec=c) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=c),
    ):
        a = await client.start(enc_waits, MARK)
        first = (await a.history())[0]
        forged = StartWorkflow(
            workflow_id="forged", run_id="f" * 32, workflow_type="enc_waits",
            input=first.attrs["input"],
        )  # fmt: skip
        await send_input(
            client.nc, client.names, client.tenant, "default", "start", encode(forged),
            msg_id="start:forged",
        )  # fmt: skip
        forged_run = await client.get_handle("forged", "f" * 32)
        with pytest.raises(WorkflowFailedError) as caught:
            await forged_run.result(timeout=20)
        await a.signal("go", "still fine")
        assert await a.result(timeout=20) == f"{MARK}: still fine"
    cause = caught.value.cause
    assert cause.type == "CiphertextRefusedError"
    assert "input of run " + "f" * 32 in cause.message and "key 'k1'" in cause.message


@pytest.mark.timeout(90)
async def test_key_missing_from_the_ring_fails_the_task_until_it_is_back(
    nats_url: str, prefix: str, hub: Hub
) -> None:
    """A payload sealed with a key the worker's ring lacks: the workflow task fails with an
    error naming the field and the key id (recorded in history), and is retried; with the
    key back in the ring the run goes on, nothing lost."""
    sealer = codec("k0", k0=K2)
    async with Client(nats_url, prefix=prefix, codec=sealer) as client:
        handle = await client.start(enc_waits, MARK)
        opts: dict[str, Any] = {"workflows": workflows, "activities": activities}
        async with running_worker(
            nats_url, prefix, codec=codec(), workflow_task_retry_delay=0.2, **opts
        ):
            events = await wait_for_history(
                client, handle.workflow_id, handle.run_id,
                lambda h: any(e.type is EventType.WORKFLOW_TASK_FAILED for e in h),
            )  # fmt: skip
        failed = next(e for e in events if e.type is EventType.WORKFLOW_TASK_FAILED)
        assert failed.attrs["failure"]["type"] == "KeyNotInRingError"
        message = failed.attrs["failure"]["message"]
        assert f"input of run {handle.run_id}" in message and "key 'k0'" in message, message
        assert "not in the key ring (it holds k1)" in message
        both = codec("k1", k1=K1, k0=K2)
        async with running_worker(
            nats_url, prefix, codec=both, workflow_task_retry_delay=0.2, **opts
        ):
            await handle.signal("go", "k0 is back")
            with pytest.raises(KeyNotInRingError, match=r"result of run .* key 'k1'"):
                await handle.result(timeout=30)  # this client's ring lacks the worker's key
            async with Client(nats_url, prefix=prefix, codec=both) as reader:
                mine = await reader.get_handle(handle.workflow_id, handle.run_id)
                assert await mine.result(timeout=30) == f"{MARK}: k0 is back"


@pytest.mark.timeout(120)
async def test_rotation_with_runs_in_flight(nats_url: str, prefix: str, hub: Hub) -> None:
    """Rotate k1 -> k2 with runs in flight, the documented way: first every reader learns
    k2 (k1 still current), then k2 becomes current (k1 kept to open older payloads). Runs
    started under k1 and signalled under k2 complete; none fails, no task fails."""
    opts: dict[str, Any] = {"workflows": workflows, "activities": activities}
    only_k1 = codec("k1", k1=K1)
    learned = codec("k1", k1=K1, k2=K2)
    rotated = codec("k2", k1=K1, k2=K2)
    async with Client(nats_url, prefix=prefix, codec=only_k1) as old_client:
        async with running_worker(nats_url, prefix, codec=only_k1, **opts):
            early = [await old_client.start(enc_waits, f"early-{i}-{MARK}") for i in range(4)]
        async with running_worker(nats_url, prefix, codec=learned, **opts):
            async with Client(nats_url, prefix=prefix, codec=rotated) as new_client:
                late = [await new_client.start(enc_waits, f"late-{i}-{MARK}") for i in range(4)]
                for h in early[:2]:
                    await (await new_client.get_handle(h.workflow_id, h.run_id)).signal("go", "k2")
        async with running_worker(nats_url, prefix, codec=rotated, **opts):
            async with Client(nats_url, prefix=prefix, codec=rotated) as new_client:
                for h in [*early[2:], *late]:
                    await (await new_client.get_handle(h.workflow_id, h.run_id)).signal("go", "k2")
                results = []
                keys: set[str] = set()
                for h in [*early, *late]:
                    mine = await new_client.get_handle(h.workflow_id, h.run_id)
                    results.append(await mine.result(timeout=30))
                    history = await mine.history()
                    assert not any(e.type is EventType.WORKFLOW_TASK_FAILED for e in history)
                    keys |= {
                        key_id_of(v) or ""
                        for e in history
                        for v in e.attrs.values()
                        if is_sealed(v)
                    }
    assert results == [f"early-{i}-{MARK}: k2" for i in range(4)] + [
        f"late-{i}-{MARK}: k2" for i in range(4)
    ]
    assert keys == {"k1", "k2"}


@pytest.mark.timeout(120)
async def test_no_plaintext_in_any_stream_with_auth_on(tmp_path: Path) -> None:
    """The same with auth on: hub, worker and client each with its own token; the hub
    holds no key. What was published and stored is read raw as the service user."""
    async with secure_stack(tmp_path) as stack:
        hub = Hub(stack.url, security=stack.hub_security())
        await hub.start()
        worker = Worker(
            stack.url, workflows=workflows, activities=activities, codec=codec(),
            security=stack.security("svc-worker", ["acme:worker"], queues=["default"]),
        )  # fmt: skip
        await worker.start()
        writer = stack.security("ann", ["acme:writer"])
        try:
            async with (
                _capture(stack.url, "imm", **stack.admin_nc_options()) as seen,
                Client(stack.url, security=writer, codec=codec()) as client,
            ):
                result, _ = await _run_everything(client)
                await asyncio.sleep(0.5)  # the last log lines reach the stream
                admin = NATS()
                await admin.connect(stack.url, **stack.admin_nc_options())
                names = client.names
                streams = (
                    names.stream_history,
                    names.stream_in,
                    names.stream_tasks,
                    names.stream_logs,
                )
                stored = {s: await _stored(admin, s) for s in streams}
                await admin.close()
        finally:
            await worker.stop()
            await hub.stop()
    _assert_no_plaintext("imm", result, seen, stored, encrypt=True)


@pytest.mark.timeout(60)
async def test_results_run_ahead_are_sealed_and_opened(
    nats_url: str, prefix: str, hub: Hub
) -> None:
    """An activity's result that the worker runs the workflow ahead with (one transition for
    result and next task) is sealed like any other, and opened by the code."""
    c = codec()
    async with (
        Client(nats_url, prefix=prefix, codec=c) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=c),
    ):
        handle = await client.start(enc_quick_flow, MARK)
        assert await handle.result(timeout=20) == f"quick quick {MARK}"
        events = await handle.history()
    completed = [e for e in events if e.type is EventType.ACTIVITY_COMPLETED]
    assert len(completed) == 2 and all(key_id_of(e.attrs["result"]) == "k1" for e in completed)
    opened = reveal_events(events, c, client.tenant, handle.workflow_id, handle.run_id)
    results = [e.attrs["result"] for e in opened if e.type is EventType.ACTIVITY_COMPLETED]
    assert [unpack(r) for r in results] == [f"quick {MARK}", f"quick quick {MARK}"]


@pytest.mark.timeout(60)
async def test_failures_reach_the_code_opened(nats_url: str, prefix: str, hub: Hub) -> None:
    """An activity's and a child's failure, sealed by their workers, are opened for the
    parent's code (the child's bound to the child's run); the hub read only their type."""
    c = codec()
    async with (
        Client(nats_url, prefix=prefix, codec=c) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=c),
    ):
        handle = await client.start(enc_catches, MARK)
        assert await handle.result(timeout=20) == [
            f"Refused: refusing {MARK} ({MARK})",
            f"Refusal: workflow fails holding {MARK} ({MARK})",
        ]
        events = await handle.history()
    failed = [
        e for e in events if e.type in (EventType.ACTIVITY_FAILED, EventType.CHILD_WORKFLOW_FAILED)
    ]
    assert [e.attrs["failure"]["type"] for e in failed] == ["Refused", "Refusal"]
    assert all(e.attrs["failure"]["message"] == "<encrypted (key k1)>" for e in failed)


@pytest.mark.timeout(60)
async def test_schedule_arguments_are_sealed_and_each_firing_opens_them(
    nats_url: str, prefix: str, hub: Hub
) -> None:
    """A schedule's arguments are sealed when it is created (bound to the schedule: no run
    exists yet); every run it fires opens them, and the schedule's record holds no
    plaintext."""
    c = codec()
    async with (
        Client(nats_url, prefix=prefix, codec=c) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=c),
    ):
        await client.schedules.create("enc-nightly", enc_quick_flow, MARK, every=1)
        async with asyncio.timeout(20):
            while not (fired := await _fired(client, "enc-nightly")):
                await asyncio.sleep(0.1)
        js = client.nc.jetstream()
        kv = await js.key_value(client.names.bucket_schedules)
        assert len(await kv.keys()) == 1
        assert [k async for k in _no_plaintext_keys(kv)] == []
        await client.schedules.delete("enc-nightly")
        run = await client.get_handle(fired[0])
        assert await run.result(timeout=10) == f"quick quick {MARK}"
        started = (await run.history())[0]
        assert started.attrs["schedule_id"] == "enc-nightly" and is_sealed(started.attrs["input"])


async def _fired(client: Client, schedule_id: str) -> list[str]:
    page = await client.list_workflows(status="completed", limit=1000)
    return sorted(r.workflow_id for r in page.runs if r.workflow_id.startswith(f"{schedule_id}@"))


async def _no_plaintext_keys(kv: Any) -> AsyncIterator[str]:
    """Keys of the bucket whose values hold the marker in the clear (none should)."""
    for key in await kv.keys():
        entry = await kv.get(key)
        if MARK.encode() in (entry.value or b""):
            yield key
