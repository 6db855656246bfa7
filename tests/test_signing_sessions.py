"""Signing sessions (issue 17, ``immortal.security.sessions``): after one Ed25519
handshake a signer authenticates its inputs by request with an HMAC under a session key
the hubs keep in ``imm-sessions``. Against a real nats-server with the auth callout, the
hubs and a worker of ``tests/test_signing``'s fixtures."""

# ruff: noqa: F811  (the fixtures are test_signing's, imported, then named as parameters)
from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import pytest

import immortal
from immortal import EventType, WorkflowContext
from immortal._inputs import OK, REJECTED
from immortal._jetstream import read_subject
from immortal.security.sessions import Session
from immortal.security.signing import Signer, SigningKey
from immortal_hub import Hub
from immortal_worker import Worker
from tests.helpers import eventually
from tests.test_signing import (  # noqa: F401  (fixtures)
    TENANT,
    _keep,
    _names,
    admin,
    dead_letters,
    no_run,
    refusals,
    rpc_subject,
    send_rpc,
    signed,
    stack,
    start_body,
    writer,
)
from tests.workflows import three_step

pytestmark = pytest.mark.timeout(90)


async def opened(signer: Signer, tenant: str = TENANT) -> Session:
    """The signer's session, once its handshake (in the background) is answered."""
    book = signer.book
    assert book is not None

    async def found() -> Session | None:
        return book.sessions.get(tenant)

    session = await eventually(found)
    assert session is not None, "no session opened"
    return session


async def test_inputs_by_request_go_under_a_session_and_history_names_the_key(
    signed: Any, admin: Any
) -> None:
    stack, hub, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key, subject="ann")
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        first = await client.start(three_step, 1, id="session-0")  # opens the session
        session = await opened(signer)
        handle = await client.start(three_step, 3, id="session-1")
        assert await asyncio.wait_for(handle.result(), 30) == 15
        assert await asyncio.wait_for(first.result(), 30) == 3
        assert signer.maced >= 1 and hub._guard.signatures.maced >= 1
        started = (await handle.history())[0]
        assert started.type is EventType.WORKFLOW_STARTED
        assert started.attrs["by"]["key_id"] == "ann-1"  # as with a signature of its own
        # The worker's inputs went under its session too.
        assert hub._guard.signatures.sessions.opened >= 2
    # The opening is audited, by key id and session id; the key is nowhere.
    names = _names()
    audit = [m.data async for m in read_subject(admin, names.stream_audit, "imm.audit.acme")]
    assert any(b"signing session opened for key id 'ann-1'" in a for a in audit)
    assert session.session_id.encode() in b"".join(audit)
    everything = b"".join(audit)
    for stream in (names.stream_history, names.stream_dlq, names.stream_logs):
        everything += b"".join([m.data async for m in read_subject(admin, stream, "imm.>")])
    assert session.key not in everything
    assert hub._guard.signatures.refused == 0


async def test_a_mac_under_a_session_no_hub_made_is_refused(signed: Any, admin: Any) -> None:
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        made_up = Session(secrets.token_urlsafe(16), secrets.token_bytes(32), "ann-1", 1e12)
        body = start_body("made-up-1")
        headers = signer.mac(made_up, rpc_subject(client), body, {"Nats-Msg-Id": "start:m1"})
        reply = await send_rpc(client, body, headers)
        assert reply.startswith(REJECTED) and b"unknown_session" in reply
        assert made_up.session_id.encode() in reply
        await no_run(admin, "made-up-1")
    [record] = await refusals(admin, "unknown_session")
    assert record.where["key_id"] == "ann-1"
    # Audited, not dead-lettered: the sender signs it with Ed25519 and sends it again
    # itself, so a re-drive of a letter would apply it twice.
    assert not any("unknown_session" in e for e in await dead_letters(admin))


async def test_under_a_real_session_an_altered_input_or_another_keys_id_is_refused(
    signed: Any, admin: Any
) -> None:
    stack, _, keys, _ = signed
    ann_key, bob_key = SigningKey.generate("ann-1"), SigningKey.generate("bob-1")
    await keys.add(ann_key)
    await keys.add(bob_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        await client.start(three_step, 1, id="real-0")
        session = await opened(signer)
        body = start_body("altered-under-session")
        headers = signer.mac(session, rpc_subject(client), body, {"Nats-Msg-Id": "start:a1"})
        reply = await send_rpc(client, body.replace(b"three_step", b"three_stop"), headers)
        assert reply.startswith(REJECTED) and b"bad_signature" in reply
        # The session is ann-1's: a MAC naming bob-1 under it is no one's.
        as_bob = Session(session.session_id, session.key, "bob-1", session.until)
        headers = signer.mac(as_bob, rpc_subject(client), body, {"Nats-Msg-Id": "start:a2"})
        reply = await send_rpc(client, body, headers)
        assert reply.startswith(REJECTED) and b"unknown_session" in reply
        await no_run(admin, "altered-under-session")
        # The right MAC goes through.
        headers = signer.mac(session, rpc_subject(client), body, {"Nats-Msg-Id": "start:a3"})
        assert await send_rpc(client, body, headers) == OK
        again = await send_rpc(client, body, headers)  # and its replay does not
        assert again.startswith(REJECTED) and b"replay" in again


async def test_a_retired_keys_session_is_refused_and_the_signer_moves_to_its_new_key(
    signed: Any, admin: Any
) -> None:
    stack, _, keys, _ = signed
    old, new = SigningKey.generate("ann-1"), SigningKey.generate("ann-2")
    await keys.add(old)
    signer = Signer([old])
    async with writer(stack, signer) as client:
        await client.start(three_step, 1, id="retire-0")
        session = await opened(signer)
        await keys.add(new)
        signer.keys.append(new)  # the rollout: the signer holds both, the newest signs
        signer._nacl[new.key_id] = type(signer._nacl[old.key_id])(new.seed)
        await keys.retire("ann-1")
        body = start_body("retired-session")
        headers = signer.mac(session, rpc_subject(client), body, {"Nats-Msg-Id": "start:r1"})
        reply = await send_rpc(client, body, headers)
        assert reply.startswith(REJECTED) and b"retired" in reply and b"ann-1" in reply
        await no_run(admin, "retired-session")
        # The client goes on: Ed25519 with ann-2 at once, then a session of ann-2.
        handle = await client.start(three_step, 3, id="retire-1")
        assert await asyncio.wait_for(handle.result(), 30) == 15
        assert (await opened_for(signer, "ann-2")).key_id == "ann-2"
        later = await client.start(three_step, 3, id="retire-2")
        assert (await later.history())[0].attrs["by"]["key_id"] == "ann-2"


async def opened_for(signer: Signer, key_id: str) -> Session:
    async def found() -> Session | None:
        session = await opened(signer)
        return session if session.key_id == key_id else None

    session = await eventually(found)
    assert session is not None, f"no session for {key_id}"
    return session


async def test_a_session_made_by_one_hub_is_checked_by_another_and_a_lost_one_falls_back(
    signed: Any, admin: Any
) -> None:
    stack, first_hub, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        await client.start(three_step, 1, id="cross-0")
        session = await opened(signer)
        await first_hub.stop()  # the hub that made it
        second = Hub(stack.url, security=stack.hub_security())
        await second.start()
        try:
            handle = await client.start(three_step, 3, id="cross-1")
            assert await asyncio.wait_for(handle.result(), 30) == 15
            assert second._guard.signatures.maced >= 1  # read from imm-sessions
            # Every hub loses the session (its entry deleted): the next input is refused
            # under it, the client signs it with Ed25519 and it goes through.
            kv = await admin.jetstream().key_value(_names().bucket_sessions)
            await kv.delete(f"{TENANT}.{session.session_id}")
            await second.stop()  # (a hub keeps a session it read until the session ends)
            second = Hub(stack.url, security=stack.hub_security())
            await second.start()
            before = signer.signed
            lost = await client.start(three_step, 3, id="cross-2")
            assert await asyncio.wait_for(lost.result(), 30) == 15
            assert signer.signed > before
            assert await refusals(admin, "unknown_session")
        finally:
            await second.stop()
            await first_hub.start()  # the fixture stops it


async def test_a_handshake_must_be_signed_with_the_key_itself(signed: Any, admin: Any) -> None:
    stack, _, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key])
    async with writer(stack, signer) as client:
        await client.start(three_step, 1, id="hs-0")
        session = await opened(signer)
        subject = rpc_subject(client).replace(".start.", ".session.")
        body = b"\x81\xa6x25519\xc4\x20" + secrets.token_bytes(32)
        from immortal._requests import Requests

        for headers, check in (
            (signer.mac(session, subject, body), b"not a MAC"),  # a session by a session
            (None, b"unsigned"),
            (Signer([SigningKey.generate("ann-1")]).sign(subject, body), b"bad_signature"),
        ):
            reply = await Requests.of(client.nc).request(subject, body, headers=headers, timeout=5)
            assert reply.data.startswith(b"rejected") and check in reply.data, reply.data
        good = await Requests.of(client.nc).request(
            subject, body, headers=signer.sign(subject, body), timeout=5
        )
        assert good.data.startswith(b"ok:")


async def test_a_signer_without_sessions_signs_every_input_with_ed25519(signed: Any) -> None:
    stack, hub, keys, _ = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    signer = Signer([ann_key], sessions=False)
    async with writer(stack, signer) as client:
        for i in range(3):
            handle = await client.start(three_step, 1, id=f"plain-{i}")
            assert await asyncio.wait_for(handle.result(), 30) == 3
        await asyncio.sleep(0.1)
        assert signer.maced == 0 and signer.signed >= 3
    assert hub._guard.signatures.refused == 0


@immortal.activity(start_to_close=30.0)
async def slow_step(x: int) -> int:
    await asyncio.sleep(1.5)
    return x


@immortal.workflow
async def slow_flow(ctx: WorkflowContext, x: int) -> int:
    return await ctx.activity(slow_step, x)


async def test_a_replayed_attempt_start_moves_no_deadline(signed: Any, admin: Any) -> None:
    """An attempt's start is checked for replay while the hub applies it: its copy finds
    the attempt's timers armed already (deduped), so its start-to-close stays put."""
    stack, _, keys, worker_key = signed
    ann_key = SigningKey.generate("ann-1")
    await keys.add(ann_key)
    security = stack.security("svc-slow", [f"{TENANT}:worker"], queues=["slow"])
    worker = Worker(
        stack.url,
        queues=["slow"],
        workflows=[slow_flow],
        activities=[slow_step],
        security=replace(security, signer=Signer([worker_key])),
    )
    await worker.start()
    captured: list[Any] = []
    capture = await admin.subscribe("imm.rpc.acme.slow.started.>", cb=_keep(captured))
    names = _names()
    try:
        async with writer(stack, Signer([ann_key])) as client:
            handle = await client.start(slow_flow, 7, id="slow-1", queue="slow")

            async def seen() -> bool:
                return bool(captured)

            assert await eventually(seen)
            timers = f"imm.timer.{TENANT}.{handle.run_id}.>"
            info = await admin.jetstream().stream_info(names.stream_timers, subjects_filter=timers)
            [subject] = [s for s in info.state.subjects or {} if ".stc-" in s]
            armed = await admin.jetstream().get_last_msg(names.stream_timers, subject)
            msg = captured[0]
            await admin.publish(msg.subject, msg.data, headers=msg.headers)
            assert await refusals(admin, "replay")

            async def dead_lettered() -> bool:  # kept once the copy's apply is done
                return any("replay" in e for e in await dead_letters(admin))

            assert await eventually(dead_lettered), "the replay was not dead-lettered"
            again = await admin.jetstream().get_last_msg(names.stream_timers, subject)
            assert (again.seq, again.data) == (armed.seq, armed.data)
            assert await asyncio.wait_for(handle.result(), 30) == 7
    finally:
        await capture.unsubscribe()
        await worker.stop()
