"""The broker isolates tenants: a real nats-server whose connections all go through our
auth service. Bad tokens are refused at CONNECT (a typed error at the caller, the reason in
IMM_AUDIT); a valid token of one tenant, used with raw nats-py on another tenant's
subjects, is refused by the server itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from nats.aio.client import Client as NATS

from immortal._connect import connect
from immortal._names import Names
from immortal.security import AuthError, ConnectSecurity, RefusalReason, TokenSource
from immortal.security.audit import UNVERIFIED_TENANT, read_audit
from immortal.security.violations import violation_for
from tests.security_fixtures import SecureStack, hs256_with, raw_token, secure_stack

N = Names()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(tmp_path) as s:
        yield s


async def admin(stack: SecureStack) -> NATS:
    return await nats.connect(stack.url, **stack.admin_nc_options())


async def refused_records(stack: SecureStack, count: int) -> list[Any]:
    nc = await admin(stack)
    try:
        for _ in range(50):
            records = await read_audit(nc, N, UNVERIFIED_TENANT)
            if len(records) >= count:
                return records
            await asyncio.sleep(0.1)
        return records
    finally:
        await nc.close()


def bad_tokens(stack: SecureStack) -> dict[RefusalReason, str | None]:
    idp = stack.idp
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = idp.claims("mallory", ["acme:admin"])
    now = int(time.time())
    return {
        RefusalReason.EXPIRED: idp.token("ann", ["acme:writer"], exp=now - 120),
        RefusalReason.NOT_YET_VALID: idp.token("ann", ["acme:writer"], nbf=now + 600),
        RefusalReason.WRONG_ISSUER: idp.token("ann", ["acme:writer"], iss="https://evil.example"),
        RefusalReason.WRONG_AUDIENCE: idp.token("ann", ["acme:writer"], aud="other"),
        RefusalReason.BAD_SIGNATURE: idp.token("mallory", ["acme:admin"], key=stranger),
        RefusalReason.UNKNOWN_KID: idp.token("m", ["acme:admin"], kid="k-nope", key=stranger),
        RefusalReason.ALG_NOT_ALLOWED: raw_token({"alg": "none", "kid": idp.newest}, claims),
        RefusalReason.NO_ROLE: idp.token("ann", ["acme:owner"]),
    }


async def test_every_bad_token_is_refused_at_connect_and_audited(stack: SecureStack) -> None:
    cases = bad_tokens(stack)
    confused = hs256_with(
        stack.idp.public_pem(),
        {"alg": "HS256", "kid": stack.idp.newest},
        stack.idp.claims("m", ["acme:admin"]),
    )
    attempts: list[tuple[RefusalReason, str | None]] = [*cases.items()]
    attempts.append((RefusalReason.ALG_NOT_ALLOWED, confused))
    attempts.append((RefusalReason.NO_TOKEN, None))
    for reason, token in attempts:
        security = ConnectSecurity(token=TokenSource.fixed(token)) if token else None
        with pytest.raises(AuthError) as info:
            await connect(stack.url, name="bad", security=security)
        assert str(info.value), reason  # one line naming the problem
        if reason in (RefusalReason.EXPIRED, RefusalReason.NOT_YET_VALID, RefusalReason.NO_TOKEN):
            assert info.value.reason is reason  # told at the caller without the keys
    # A token that is not a JWT is refused before it leaves: no principal id can be read.
    with pytest.raises(AuthError) as info:
        await connect(stack.url, name="bad", security=ConnectSecurity.with_token("not-a-jwt"))
    assert info.value.reason is RefusalReason.MALFORMED
    records = await refused_records(stack, len(attempts))
    assert [r.reason for r in records] == [str(reason) for reason, _ in attempts]
    for record, (_, token) in zip(records, attempts, strict=True):
        assert record.decision == "deny" and record.action == "connect"
        assert token is None or token not in json.dumps(record.model_dump(mode="json"))
    assert records[0].claimed is not None and records[0].claimed["sub"] == "ann"
    assert stack.service.refused == len(attempts)


async def denied(nc: NATS, subject: str, action: Any) -> bool:
    """Whether the server refused ``action`` (a publish or subscribe to ``subject``)."""
    try:
        await action()
    except Exception:
        pass
    await nc.flush()
    for _ in range(40):
        if violation_for(nc, subject) is not None:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_tenant_cannot_touch_another_tenants_subjects(stack: SecureStack) -> None:
    acme = stack.security("ann", ["acme:admin"])
    nc = await connect(stack.url, name="acme-admin", security=acme)
    inbox = nc.new_inbox()
    assert inbox.startswith("_INBOX_p")  # its own prefix: other connections cannot read it
    pid = acme.sender()
    try:
        publishes = [
            f"imm.rpc.globex.default.start.{pid}",  # start in another tenant
            f"imm.in.globex.default.cancel.{pid}",
            "imm.rpc.acme.default.start.pother",  # as another sender of its own tenant
            "$JS.API.DIRECT.GET.IMM_HISTORY.imm.hist.globex.order-1.>",  # direct get
            "$JS.API.DIRECT.GET.IMM_HISTORY.imm.hist.*.order-1.>",  # by wildcard
            "$JS.API.DIRECT.GET.IMM_HISTORY",  # the batched form: filter in the body
            "$JS.API.DIRECT.GET.KV_imm-runs.$KV.imm-runs.globex.order-1",  # KV get
            "$KV.imm-idem.globex.key=3Ax",  # KV put
            "$JS.API.CONSUMER.CREATE.IMM_TASKS.wf_globex_default.imm.task.globex.default.wf",
            "$JS.API.CONSUMER.CREATE.IMM_HISTORY",  # consumer with its filter in the body
            "$JS.API.CONSUMER.MSG.NEXT.IMM_TASKS.wf_globex_default",
            "$JS.API.STREAM.INFO.IMM_HISTORY",  # would list every tenant's subjects
            "imm.fired.acme.default",  # only the server fires timers
            "imm.hist.acme.x.y",  # history is appended by hubs only
        ]
        for subject in publishes:
            assert await denied(nc, subject, lambda s=subject: nc.publish(s, b"{}", reply=inbox)), (
                subject
            )
        for subject in ["imm.hist.globex.>", "imm.log.globex.>", "imm.push.globex.default", ">"]:
            assert await denied(nc, subject, lambda s=subject: nc.subscribe(s)), subject
    finally:
        await nc.close()


async def test_a_reader_cannot_start_and_a_worker_cannot_pull_another_queue(
    stack: SecureStack,
) -> None:
    reader = stack.security("rita", ["acme:reader"])
    nc = await connect(stack.url, name="reader", security=reader)
    try:
        for kind in ("start", "signal", "cancel", "terminate"):
            subject = f"imm.rpc.acme.default.{kind}.{reader.sender()}"
            assert await denied(nc, subject, lambda s=subject: nc.publish(s, b"")), subject
        allowed = "$JS.API.DIRECT.GET.IMM_HISTORY.imm.hist.acme.order-1.>"
        assert not await denied(nc, allowed, lambda: nc.publish(allowed, b"", reply=nc.new_inbox()))
    finally:
        await nc.close()
    worker = stack.security("svc", ["acme:worker"], queues=["orders"])
    nc = await connect(stack.url, name="worker", security=worker)
    try:
        for subject in (
            "$JS.API.CONSUMER.MSG.NEXT.IMM_TASKS.act_acme_payments",
            "$JS.API.CONSUMER.CREATE.IMM_TASKS.act_acme_payments.imm.task.acme.payments.act",
            f"imm.rpc.acme.payments.wft.{worker.sender()}",
        ):
            assert await denied(nc, subject, lambda s=subject: nc.publish(s, b"")), subject
        sub = "imm.push.acme.payments"
        assert await denied(nc, sub, lambda: nc.subscribe(sub))
        own = "$JS.API.CONSUMER.MSG.NEXT.IMM_TASKS.act_acme_orders"
        assert not await denied(nc, own, lambda: nc.publish(own, b"", reply=nc.new_inbox()))
    finally:
        await nc.close()


async def test_a_large_oidc_token_fits_in_connect(stack: SecureStack) -> None:
    # IdP tokens with many groups run to several KB; the default 4 KB control line would
    # refuse the CONNECT that carries them (the config sets 16 KB).
    groups = [f"team-{i:04d}-with-a-long-name" for i in range(250)]
    security = stack.security("ann", ["acme:reader"], groups=groups)
    assert security.token is not None and len(security.token()) > 8000
    nc = await connect(stack.url, name="big", security=security)
    assert nc.is_connected
    await nc.close()


def test_the_permission_table_in_docs_is_the_one_the_auth_service_uses() -> None:
    from pathlib import Path

    from immortal.security import permission_table

    doc = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    assert permission_table() in doc, "regenerate docs/security.md's table: permission_table()"
