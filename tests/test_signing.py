"""Signed inputs with auth on (issue 17): every input a client or worker sends is signed
with a key of the tenant's registry, and the hub checks the signature before it applies
anything. Each bad input is refused with a record in IMM_AUDIT (and a dead letter naming
the reason), and the run it aimed at is unaffected."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

import immortal_hub._signatures
from immortal import Client, EventType, ImmortalError, format_timeline
from immortal._codec import encode_args
from immortal._inputs import OK, REJECTED
from immortal._jetstream import last_message, read_subject
from immortal._requests import Requests
from immortal._wire import StartWorkflow, Transition, decode, encode
from immortal.security import sender_of
from immortal.security.audit import AuditRecord, read_audit
from immortal.security.keys import KeyRegistry, RegisteredKey, read_registry, write_registry
from immortal.security.signing import (
    SignatureError,
    SignatureRefusal,
    Signer,
    SigningKey,
    parse_signature,
)
from immortal_hub import Hub
from immortal_worker import Worker
from tests.helpers import eventually
from tests.security_fixtures import SecureStack, secure_stack
from tests.test_policy_hub import apply as apply_policy
from tests.workflows import add, double, square, three_step, waits_for_go

pytestmark = pytest.mark.timeout(90)

TENANT = "acme"
ALLOW_WRITERS = """
tenant: acme
version: 1
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
"""


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def admin(stack: SecureStack) -> AsyncIterator[Any]:
    """The service user's connection: what a test reads raw (audit) or replays."""
    nc = await nats.connect(stack.url, **stack.admin_nc_options())
    yield nc
    await nc.drain()


class Keys:
    """The tenant's registry, changed as its admin would (``immortal keys``), and waited
    for until the hubs know it."""

    def __init__(self, stack: SecureStack, hubs: list[Hub]) -> None:
        self.stack, self.hubs = stack, hubs

    async def change(self, tenant: str, change: Callable[[KeyRegistry], KeyRegistry]) -> None:
        security = self.stack.security("root", [f"{tenant}:admin"])
        async with Client(self.stack.url, security=security) as client:
            registry, revision = await read_registry(client.nc, client.names, tenant)
            assert await write_registry(client.nc, client.names, tenant, change(registry), revision)
            wanted, _ = await read_registry(client.nc, client.names, tenant)
        for _ in range(200):  # the hubs watch the registry: a change applies within a second
            if all(h._guard.signatures.registry(tenant) == wanted for h in self.hubs):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the hubs did not see the registry change")

    async def add(self, key: SigningKey, tenant: str = TENANT, **kw: Any) -> None:
        entry = RegisteredKey(key.key_id, key.public_key, **kw)
        await self.change(tenant, lambda r: r.added(entry))

    async def retire(self, key_id: str, tenant: str = TENANT) -> None:
        await self.change(tenant, lambda r: r.retired(key_id))


@pytest.fixture
async def signed(stack: SecureStack) -> AsyncIterator[tuple[SecureStack, Hub, Keys, SigningKey]]:
    """A hub, the tenant's registry holding the worker's key, and a worker signing with it."""
    hub = Hub(stack.url, security=stack.hub_security())
    await hub.start()
    keys = Keys(stack, [hub])
    worker_key = SigningKey.generate("worker-1")
    await keys.add(worker_key, role="worker")
    worker = Worker(
        stack.url,
        workflows=[three_step, waits_for_go],
        activities=[double, square, add],
        security=_with_signer(
            stack.security("svc-worker", [f"{TENANT}:worker"], queues=["default"]),
            Signer([worker_key]),
        ),
    )
    await worker.start()
    try:
        yield stack, hub, keys, worker_key
    finally:
        await worker.stop()
        await hub.stop()


def _with_signer(security: Any, signer: Signer | None) -> Any:
    from dataclasses import replace

    return replace(security, signer=signer)


def writer(stack: SecureStack, signer: Signer | None, subject: str = "ann") -> Client:
    security = _with_signer(stack.security(subject, [f"{TENANT}:writer"]), signer)
    return Client(stack.url, security=security)


async def refusals(nc: Any, check: str, tenant: str = TENANT) -> list[AuditRecord]:
    """The signature refusals of ``check`` in IMM_AUDIT (read raw), waiting for one; not
    those of session handshakes (a signer with a bad key is refused its session too)."""
    for _ in range(100):
        found = [
            r
            for r in await read_audit(nc, _names(), tenant)
            if r.reason == "signature"
            and r.where.get("check") == check
            and ".session." not in r.where.get("subject", "")  # a session's handshake
        ]
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


async def replays(nc: Any, n: int) -> list[AuditRecord]:
    """The replay refusals in IMM_AUDIT, once there are ``n`` of them (or what there is
    after waiting)."""

    async def counted() -> list[AuditRecord] | None:
        found = await refusals(nc, "replay")
        return found if len(found) == n else None

    return await eventually(counted) or await refusals(nc, "replay")


async def dead_letters(nc: Any, tenant: str = TENANT) -> list[str]:
    """The reasons of the tenant's dead letters, read raw from IMM_DLQ."""
    subject = f"imm.dlq.{tenant}.>"
    return [m.headers.get("Imm-Error", "") async for m in read_subject(nc, "IMM_DLQ", subject)]


def _names() -> Any:
    from immortal._names import Names

    return Names()


async def no_run(nc: Any, workflow_id: str, tenant: str = TENANT) -> None:
    """Nothing of ``workflow_id`` reached history (read raw by the service user)."""
    names = _names()
    subject = names.workflow_history_filter(tenant, workflow_id)
    assert [m async for m in read_subject(nc, names.stream_history, subject)] == []


def start_body(workflow_id: str, run_id: str | None = None) -> bytes:
    return encode(
        StartWorkflow(
            workflow_id=workflow_id,
            run_id=run_id or uuid.uuid4().hex,
            workflow_type="three_step",
            input=encode_args([3]),
        )
    )


async def send_rpc(
    client: Client, body: bytes, headers: dict[str, str] | None, *, queue: str = "default"
) -> bytes:
    subject = client.names.rpc_subject(TENANT, queue, "start", sender_of(client.nc))
    reply = await Requests.of(client.nc).request(subject, body, headers=headers, timeout=5)
    return bytes(reply.data)


def rpc_subject(client: Client, queue: str = "default") -> str:
    return client.names.rpc_subject(TENANT, queue, "start", sender_of(client.nc))


# -- a signed deployment works, and history names the key -------------------------------


async def test_signed_inputs_run_a_workflow_and_history_names_the_key(signed: Any) -> None:
    stack, hub, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key, subject="ann")
    async with writer(stack, Signer([ann_key])) as client:
        handle = await client.start(three_step, 3, id="signed-1")
        assert await asyncio.wait_for(handle.result(), 30) == 15
        events = await handle.history()
        started = events[0]
        assert started.type is EventType.WORKFLOW_STARTED
        assert started.attrs["by"]["key_id"] == "ann-1"
        assert started.attrs["by"]["subject"] == "ann"
        assert "by ann (writer, signed with key ann-1)" in format_timeline(events).splitlines()[0]
        # The worker's results name its key beside the worker.
        results = [
            e
            for e in events
            if e.type in (EventType.ACTIVITY_COMPLETED, EventType.WORKFLOW_TASK_COMPLETED)
        ]
        assert len(results) >= 4 and {e.attrs["key_id"] for e in results} == {"worker-1"}
        history = str(await handle.history())
        assert ann_key.public_key not in history  # nor any secret:
        assert str(ann_key.to_json()["seed"]) not in history
    assert hub._guard.signatures.refused == 0


# -- refused: unsigned, unknown, retired, not yet valid, someone else's ----------------


async def test_unsigned_input_is_refused_when_the_tenant_has_keys(signed: Any, admin: Any) -> None:
    stack, *_ = signed
    async with writer(stack, None) as client:
        with pytest.raises(SignatureError, match=r"signature refused \(unsigned\)"):
            await client.start(three_step, 3, id="unsigned-1")
        await no_run(admin, "unsigned-1")
        assert any("requires signed inputs" in e for e in await dead_letters(admin))
    [record] = await refusals(admin, "unsigned")
    assert record.decision == "deny" and "acme" in record.message


@pytest.mark.parametrize(
    ("registered", "check", "message"),
    [
        (None, "unknown_key", "key id 'k9' is not in the registry"),
        ({"not_after": 1.0}, "retired_key", "key id 'k9' is retired"),
        ({"not_before": time.time() + 3600}, "key_not_yet_valid", "key id 'k9' is not valid"),
    ],
)
async def test_a_key_the_hub_may_not_accept_is_refused_by_its_id(
    signed: Any, admin: Any, registered: dict[str, float] | None, check: str, message: str
) -> None:
    stack, _, keys, _ = signed
    k9 = SigningKey.generate("k9")
    if registered is not None:
        await keys.add(k9, **registered)
    async with writer(stack, Signer([k9])) as client:
        with pytest.raises(SignatureError, match=message) as refused:
            await client.start(three_step, 3, id=f"bad-key-{check}")
        assert refused.value.refusal is SignatureRefusal(check) and refused.value.key_id == "k9"
        await no_run(admin, f"bad-key-{check}")
        assert any(message in e for e in await dead_letters(admin))
    [record] = await refusals(admin, check)
    assert record.where["key_id"] == "k9"


async def test_a_key_owned_by_another_principal_is_refused(signed: Any, admin: Any) -> None:
    stack, _, keys, _ = signed
    bobs = SigningKey.generate("bob-1")
    await keys.add(bobs, subject="bob")
    async with writer(stack, Signer([bobs]), subject="ann") as client:
        with pytest.raises(SignatureError, match="key id 'bob-1' belongs to subject='bob'"):
            await client.start(three_step, 3, id="not-yours")
        await no_run(admin, "not-yours")
    assert await refusals(admin, "wrong_owner")


async def test_tenant_a_key_on_tenant_b_subject_is_unknown_there(signed: Any, admin: Any) -> None:
    stack, _, keys, _ = signed
    acme_key = SigningKey.generate("acme-1")
    await keys.add(acme_key)
    await keys.add(SigningKey.generate("beta-1"), tenant="beta")  # beta requires signatures
    security = _with_signer(stack.security("eve", ["beta:writer"]), Signer([acme_key]))
    async with Client(stack.url, security=security) as beta:
        with pytest.raises(SignatureError, match="key id 'acme-1' is not in the registry"):
            await beta.start(three_step, 3, id="cross-1")
        await no_run(admin, "cross-1", "beta")
    [record] = await refusals(admin, "unknown_key", tenant="beta")
    assert record.where["key_id"] == "acme-1"


# -- refused: altered body, subject, header; expired -----------------------------------


@pytest.mark.parametrize("altered", ["body", "subject", "header"])
async def test_an_altered_input_is_refused(signed: Any, admin: Any, altered: str) -> None:
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, None) as client:
        body = start_body(f"altered-{altered}")
        headers = signer.sign(rpc_subject(client), body, {"Nats-Msg-Id": "start:x"})
        queue = "default"
        if altered == "body":
            body = start_body(f"altered-{altered}-other")
        elif altered == "subject":
            queue = "other"  # the same signed input aimed at another queue
        else:
            headers["Nats-Msg-Id"] = "start:y"
        reply = await send_rpc(client, body, headers, queue=queue)
        assert reply.startswith(REJECTED) and b"bad_signature" in reply
        assert b"'ann-1' does not match this input" in reply
        await no_run(admin, f"altered-{altered}")
        await no_run(admin, f"altered-{altered}-other")
    assert await refusals(admin, "bad_signature")


async def test_an_expired_signature_is_refused(signed: Any, admin: Any) -> None:
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    ten_minutes_ago = Signer([ann_key], clock=lambda: time.time() - 600)
    async with writer(stack, ten_minutes_ago) as client:
        with pytest.raises(SignatureError, match="expired"):
            await client.start(three_step, 3, id="expired-1")
        await no_run(admin, "expired-1")
    [record] = await refusals(admin, "expired")
    assert record.where["key_id"] == "ann-1"


# -- replays ------------------------------------------------------------------------------


async def test_a_replay_by_request_inside_the_window_changes_nothing(
    signed: Any, admin: Any
) -> None:
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        handle = await client.start(waits_for_go, 1, id="replayed-1")
        body = start_body("replayed-2")
        headers = signer.sign(rpc_subject(client), body, {"Nats-Msg-Id": "start:r2"})
        assert await send_rpc(client, body, headers) == OK
        again = await send_rpc(client, body, headers)  # the same bytes, the same headers
        assert again.startswith(REJECTED) and b"replay" in again
        events = await (await client.get_handle("replayed-2")).history()
        assert [e.type for e in events].count(EventType.WORKFLOW_STARTED) == 1
        await handle.signal("go", None)
        assert await asyncio.wait_for(handle.result(), 30) == 4  # the run goes on
    [record] = await refusals(admin, "replay")
    assert record.where["key_id"] == "ann-1"


async def test_a_replay_into_imm_in_is_dropped_inside_and_refused_after_the_window(
    signed: Any, admin: Any
) -> None:
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        js = client.nc.jetstream()
        subject = client.names.input_subject(TENANT, "default", "start", sender_of(client.nc))
        body = start_body("queued-1")
        headers = signer.sign(subject, body, {"Nats-Msg-Id": "start:q1"})
        first = await js.publish(subject, body, headers=headers)
        # Inside the window: the stream's dedupe on the signed Nats-Msg-Id drops the copy.
        second = await js.publish(subject, body, headers=headers)
        assert not first.duplicate and second.duplicate
        for _ in range(200):
            handle = await client.get_handle("queued-1")
            if await handle.history():
                break
            await asyncio.sleep(0.05)
        assert [e.type for e in await handle.history()].count(EventType.WORKFLOW_STARTED) == 1
        # After the window: a copy signed 100 s ago (captured then), stored now.
        late = Signer([ann_key], clock=lambda: time.time() - 100)
        old_body = start_body("queued-late")
        old = late.sign(subject, old_body, {"Nats-Msg-Id": "start:q-late"})
        await js.publish(subject, old_body, headers=old)
        [record] = await refusals(admin, "expired")
        assert record.where["key_id"] == "ann-1"
        await no_run(admin, "queued-late")
        assert any("expired" in e for e in await dead_letters(admin))


async def test_a_captured_signed_start_replayed_to_a_second_hub_is_refused(
    signed: Any, admin: Any
) -> None:
    stack, first_hub, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    captured: list[Any] = []
    capture = await admin.subscribe("imm.rpc.acme.*.start.>", cb=_keep(captured))
    async with writer(stack, Signer([ann_key])) as client:
        handle = await client.start(waits_for_go, 1, id="captured-1")
        await capture.unsubscribe()
        [msg] = captured
        await first_hub.stop()  # the one that applied it
        second = Hub(stack.url, security=stack.hub_security())
        await second.start()
        try:
            await admin.publish(msg.subject, msg.data, headers=msg.headers)
            [record] = await refusals(admin, "replay")
            assert record.by == second.hub_id and record.where["key_id"] == "ann-1"
            # Into IMM_IN instead: it was signed for imm.rpc, so it is no one's there.
            queued = msg.subject.replace("imm.rpc.", "imm.in.", 1)
            await admin.jetstream().publish(queued, msg.data, headers=msg.headers)
            assert await refusals(admin, "bad_signature")
            events = await handle.history()
            assert [e.type for e in events].count(EventType.WORKFLOW_STARTED) == 1
            await handle.signal("go", None)
            assert await asyncio.wait_for(handle.result(), 30) == 4
        finally:
            await second.stop()
            await first_hub.start()  # the fixture stops it


async def test_captured_worker_inputs_and_a_signal_replayed_change_nothing(
    signed: Any, admin: Any
) -> None:
    """A worker's results and workflow tasks are checked for replay while the hub applies
    them (their copy is stale by then); a signal's nonce is checked first. Each copy sent
    again is refused as a replay, and the finished run's history stays as it was."""
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    captured: list[Any] = []
    capture = await admin.subscribe("imm.rpc.acme.>", cb=_keep(captured))
    async with writer(stack, Signer([ann_key])) as client:
        handle = await client.start(waits_for_go, 1, id="captured-worker-1")
        await handle.signal("go", None)
        assert await asyncio.wait_for(handle.result(), 30) == 4
        await capture.unsubscribe()
        before = [e.type for e in await handle.history()]
        kinds = {m.subject.split(".")[4]: m for m in captured}
        assert {"wft", "act", "started", "signal"} <= set(kinds), sorted(kinds)
        for n, kind in enumerate(("wft", "act", "started", "signal"), 1):
            msg = kinds[kind]  # (the hub answers only the sender's own inbox)
            await admin.publish(msg.subject, msg.data, headers=msg.headers)
            refused = await replays(admin, n)
            assert len(refused) == n and f".{kind}." in refused[-1].where["subject"], kind
        assert [e.type for e in await handle.history()] == before
    assert any("replay" in e for e in await dead_letters(admin))


@pytest.mark.parametrize("kept", [16, 2])
async def test_a_run_records_the_nonces_of_its_inputs_and_refuses_their_copies(
    signed: Any, admin: Any, kept: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start, a workflow task's result and an attempt's result by request: the
    transition that applies one records its nonce in the run's state, and imm-nonces gets
    no write for it; past the run's ring (``kept``), the next ones go to imm-nonces. Either
    way each copy sent again is refused as a replay, and history stays as it was."""
    monkeypatch.setattr(immortal_hub._signatures, "NONCES_KEPT", kept)
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    captured: list[Any] = []
    capture = await admin.subscribe("imm.rpc.acme.>", cb=_keep(captured))
    async with writer(stack, Signer([ann_key])) as client:
        handle = await client.start(three_step, 3, id="recorded-1")
        assert await asyncio.wait_for(handle.result(), 30) == 15
        await capture.unsubscribe()
        history = client.names.history_subject(TENANT, "recorded-1", handle.run_id)
        last = await last_message(admin, client.names.stream_history, history)
        assert last is not None
        ring = {n for n, _ in decode(Transition, last.data).state.nonces or []}
        bucket = await admin.jetstream().key_value(client.names.bucket_nonces)
        recorded = [m for m in captured if m.subject.split(".")[4] in ("start", "wft", "act")]
        assert {m.subject.split(".")[4] for m in recorded} == {"start", "wft", "act"}
        for msg in recorded:
            found = parse_signature(msg.headers)
            assert found is not None
            nonce = found[0].nonce
            in_bucket = await _has_key(bucket, f"{TENANT}.{nonce}")
            assert (nonce in ring) != in_bucket, msg.subject  # one or the other, never both
        assert len(ring) == min(kept, len(recorded))
        before = [e.type for e in await handle.history()]
        for n, msg in enumerate(recorded, 1):
            await admin.publish(msg.subject, msg.data, headers=msg.headers)
            assert len(await replays(admin, n)) == n, msg.subject
        assert [e.type for e in await handle.history()] == before


async def test_a_start_replayed_after_its_tenant_got_a_policy_is_refused(
    signed: Any, admin: Any
) -> None:
    """Under a policy a start's nonce is created before it is decided; a copy of a start
    applied before the policy existed (its nonce recorded by its run only) is still found
    in the run and refused."""
    stack, hub, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        body = start_body("before-policy")
        headers = signer.sign(rpc_subject(client), body, {"Nats-Msg-Id": "start:bp"})
        assert await send_rpc(client, body, headers) == OK
        await apply_policy(stack, ALLOW_WRITERS, hub)
        again = await send_rpc(client, body, headers)
        assert again.startswith(REJECTED) and b"replay" in again, again
        events = await (await client.get_handle("before-policy")).history()
        assert [e.type for e in events].count(EventType.WORKFLOW_STARTED) == 1
    [record] = await refusals(admin, "replay")
    assert record.where["key_id"] == "ann-1"


async def test_schedule_changes_are_signed_checked_and_name_their_key(
    signed: Any, admin: Any
) -> None:
    """A schedule change is a request to a hub, checked as an input is: signed, its key
    recorded beside its author; unsigned, refused (typed, audited, nothing written); the
    same signed request again, refused as a replay."""
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    async with writer(stack, Signer([ann_key])) as client:
        made = await client.schedules.create("nightly", three_step, 2, every=3600)
        assert made.schedule_id == "nightly"
        author = (await client.schedules.get("nightly")).principal or {}
        assert author.get("key_id") == "ann-1" and author.get("subject") == "ann", author
        captured: list[Any] = []
        capture = await admin.subscribe("imm.schedules.acme.>", cb=_keep(captured))
        await admin.flush()
        await client.schedules.pause("nightly")

        async def seen() -> bool:
            return bool(captured)

        await eventually(seen)
        await capture.unsubscribe()
        [msg] = captured
        # The same bytes again, from the sender's own connection (its inbox for the answer).
        again = await Requests.of(client.nc).request(
            msg.subject, msg.data, headers=msg.headers, timeout=5
        )
        assert b"replay" in again.data, again.data
    async with writer(stack, None) as unsigned:
        with pytest.raises(SignatureError) as caught:
            await unsigned.schedules.create("other", three_step, 2, every=3600)
        assert caught.value.refusal is SignatureRefusal.UNSIGNED
        with pytest.raises(ImmortalError, match="no schedule"):
            await unsigned.schedules.get("other")
    assert await refusals(admin, "unsigned") and await refusals(admin, "replay")


async def _has_key(bucket: Any, key: str) -> bool:
    try:
        await bucket.get(key)
    except nats.js.errors.KeyNotFoundError:
        return False
    return True


def _keep(into: list[Any]) -> Callable[[Any], Awaitable[None]]:
    async def keep(msg: Any) -> None:
        into.append(msg)

    return keep


# -- rotation -------------------------------------------------------------------------------


async def test_a_rotation_with_runs_in_flight_fails_none(stack: SecureStack, admin: Any) -> None:
    """Add the new keys, let the signers move to them (each signs with the newest key whose
    not_before has passed), retire the old ones: the runs started under the old keys
    finish under the new ones, the worker's results included."""
    hub = Hub(stack.url, security=stack.hub_security())
    await hub.start()
    keys = Keys(stack, [hub])
    switch_at = time.time() + 2.0
    w1, w2 = SigningKey.generate("worker-1"), SigningKey.generate("worker-2", not_before=switch_at)
    k1, k2 = SigningKey.generate("k1"), SigningKey.generate("k2", not_before=switch_at)
    await keys.add(w1, role="worker")
    await keys.add(k1)
    worker = Worker(
        stack.url,
        workflows=[three_step, waits_for_go],
        activities=[double, square, add],
        security=_with_signer(
            stack.security("svc-worker", [f"{TENANT}:worker"], queues=["default"]),
            Signer([w1, w2]),
        ),
    )
    await worker.start()
    signer = Signer([k1, k2])
    try:
        async with writer(stack, signer) as client:
            early = [await client.start(waits_for_go, i, id=f"rot-{i}") for i in range(4)]
            # 1. the new keys, valid a little before the signers move to them
            await keys.add(w2, role="worker", not_before=switch_at - 1.0)
            await keys.add(k2, not_before=switch_at - 1.0)
            while time.time() < switch_at + 0.1:  # 2. the signers move by themselves
                await asyncio.sleep(0.1)
            assert signer.current().key_id == "k2"
            await early[0].signal("go", None)
            await keys.retire("k1")  # 3. the old keys retired, runs in flight
            await keys.retire("worker-1")
            for handle in early[1:]:
                await handle.signal("go", None)
            late = await client.start(three_step, 3, id="rot-late")
            results = [await asyncio.wait_for(h.result(), 30) for h in early]
            assert results == [4 * i for i in range(4)]
            assert await asyncio.wait_for(late.result(), 30) == 15
            for handle in early:
                events = await handle.history()
                assert events[0].attrs["by"]["key_id"] == "k1"
                signalled = [e for e in events if e.type is EventType.WORKFLOW_SIGNALED]
                assert [e.attrs["by"]["key_id"] for e in signalled] == ["k2"]
                done = [e for e in events if e.type is EventType.ACTIVITY_COMPLETED]
                assert [e.attrs["key_id"] for e in done] == ["worker-1", "worker-2"]
        assert hub._guard.signatures.refused == 0
        assert await dead_letters(admin) == []
    finally:
        await worker.stop()
        await hub.stop()


@pytest.mark.parametrize("action", ["signal", "cancel", "terminate"])
async def test_a_refused_input_to_a_running_run_leaves_it_as_it_was(
    signed: Any, admin: Any, action: str
) -> None:
    stack, _, keys, _ = signed
    good, unknown = SigningKey.generate("ann-1"), SigningKey.generate("k9")
    await keys.add(good)
    async with writer(stack, Signer([good])) as client:
        handle = await client.start(waits_for_go, 2, id=f"running-{action}")
        async with writer(stack, Signer([unknown])) as intruder:
            theirs = await intruder.get_handle(f"running-{action}")
            with pytest.raises(SignatureError, match="key id 'k9' is not in the registry"):
                if action == "signal":
                    await theirs.signal("go", None)
                else:
                    await getattr(theirs, action)("by an unknown key")
        assert await refusals(admin, "unknown_key")
        types = {e.type for e in await handle.history()}
        assert not types & {
            EventType.WORKFLOW_SIGNALED,
            EventType.WORKFLOW_CANCEL_REQUESTED,
            EventType.WORKFLOW_TERMINATED,
        }
        await handle.signal("go", None)
        assert await asyncio.wait_for(handle.result(), 30) == 8
