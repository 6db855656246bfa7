"""The codec endpoint over real HTTP: payloads of a real run opened for a verified reader
of the tenant, refused to everyone else; the keys never leave the server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest

from immortal import Client, EventType
from immortal.codec._server import CodecServer
from immortal.security import TokenVerifier
from immortal_hub import Hub
from tests.codec_workflows import MARK, activities, enc_waits, workflows
from tests.helpers import running_worker
from tests.security_fixtures import Issuer
from tests.test_codec import K2, codec


def _post(url: str, body: Any, token: str | None, *, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.timeout(60)
async def test_decode_for_a_verified_reader_only(
    nats_url: str, prefix: str, hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        Client(nats_url, prefix=prefix, codec=codec()) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=codec()),
    ):
        handle = await client.start(enc_waits, MARK)
        await handle.signal("go", {"card": MARK})
        assert await handle.result(timeout=20) == f"{MARK}: {{'card': '{MARK}'}}"
        events = await handle.history()
    started = next(e for e in events if e.type is EventType.WORKFLOW_STARTED)
    signalled = next(e for e in events if e.type is EventType.WORKFLOW_SIGNALED)
    completed = events[-1]
    old_key = codec("k0", k0=K2).encode(b"\x91\x01", _binding(handle, "input"))

    with Issuer.serving() as idp:
        server = CodecServer(
            {"default": codec()}, TokenVerifier(idp.config()), allow_origin="https://ui.example"
        )
        server.start()
        try:
            url = f"{server.url}/decode"
            reader = idp.token("rita", ["default:reader"])
            body = {
                "workflow_id": handle.workflow_id,
                "run_id": handle.run_id,
                "payloads": [
                    {"field": "input", "data": _b64(started.attrs["input"])},
                    {"field": "signal:go", "data": _b64(signalled.attrs["input"])},
                    {"field": "result", "data": _b64(completed.attrs["result"])},
                    {"field": "result", "data": _b64(completed.attrs["result"]), "run_id": "x"},
                    {"field": "input", "data": _b64(old_key)},
                    {"field": "input", "data": _b64(b"\x91\xa3abc")},  # plain: as it is
                    {"field": "input", "data": "not base64!"},
                ],
            }
            with caplog.at_level(logging.DEBUG):
                status, answer = await asyncio.to_thread(_post, url, body, reader)
            assert status == 200, answer
            got = answer["payloads"]
            assert got[0]["value"] == [MARK]
            assert got[1]["value"] == {"card": MARK}
            assert got[2]["value"] == f"{MARK}: {{'card': '{MARK}'}}"
            assert base64.b64decode(got[2]["data"])[:1] != b"\xc1"  # plain msgpack
            assert "refused" in got[3]["error"] and got[3]["key_id"] == "k1"
            assert got[4] == {"error": "<encrypted: key k0 not in ring>", "key_id": "k0"}
            assert got[5]["value"] == ["abc"]
            assert got[6] == {"error": "data is not base64"}
            assert reader not in caplog.text and "4111" not in caplog.text

            refusals = {
                "no token": (None, body, 401, "no bearer token"),
                "forged": (idp.token("eve", ["default:reader"], key=_other_key()), body, 401,
                           "token refused"),
                "other tenant": (idp.token("ann", ["other:admin"]), body, 403,
                                 "no key ring for tenant 'other'"),
                "the hub": (idp.token("hub", ["immortal-system:hub"]), body, 403,
                            "may not read payloads"),
                "tenant in body": (reader, {**body, "tenant": "other"}, 403,
                                   "the token is for tenant 'default', not 'other'"),
            }  # fmt: skip
            for case, (token, request, code, message) in refusals.items():
                status, answer = await asyncio.to_thread(_post, url, request, token)
                assert (status, message in answer["error"]) == (code, True), (case, answer)
                assert "value" not in json.dumps(answer)
            status, answer = await asyncio.to_thread(_post, url, None, reader, raw=b"{nope")
            assert status == 400 and "not JSON" in answer["error"]
            status, answer = await asyncio.to_thread(_post, f"{server.url}/encode", body, reader)
            assert status == 404
            preflight = urllib.request.Request(url, method="OPTIONS")
            with urllib.request.urlopen(preflight, timeout=10) as answer_:
                assert answer_.status == 204
                assert answer_.headers["Access-Control-Allow-Origin"] == "https://ui.example"
        finally:
            server.stop()


def _binding(handle: Any, field: str) -> Any:
    from immortal.codec import Binding

    return Binding(handle.client.tenant, handle.workflow_id, handle.run_id, field)


def _other_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
