"""The signature scheme itself (``immortal.security.signing``, ``keys``): what is signed,
what a forged or odd header does, which key a signer picks, the registry's rules; and a
hub told to require signatures with auth off."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from typing import Any

import pytest

from immortal import Client
from immortal._transient import key_value
from immortal.security import ConnectSecurity
from immortal.security.keys import KeyRegistry, RegisteredKey, registry_key
from immortal.security.sessions import Session
from immortal.security.signing import (
    MAC,
    SIGNATURE,
    SIGNATURE_INPUT,
    SignatureError,
    SignatureRefusal,
    Signer,
    SigningKey,
    mac_base,
    parse_signature,
    public_key_bytes,
    session_refused,
    verify_signature,
)
from immortal_hub import Hub
from tests.workflows import three_step, workflows

SUBJECT = "imm.rpc.acme.default.start.p1"
BODY = b"\x81\xa1a\x01"


def _signed(signer: Signer | None = None, **headers: str) -> tuple[Signer, dict[str, str]]:
    signer = signer or Signer([SigningKey.generate("k1")])
    return signer, signer.sign(SUBJECT, BODY, {"Nats-Msg-Id": "start:r1", **headers})


def _verifies(
    signer: Signer, headers: dict[str, str], subject: str = SUBJECT, body: bytes = BODY
) -> bool:
    found = parse_signature(headers)
    assert found is not None
    params, signature = found
    public = public_key_bytes(signer.keys[0].public_key)
    return verify_signature(public, subject, body, headers, params, signature)


def test_a_signature_covers_subject_body_headers_and_its_parameters() -> None:
    signer, headers = _signed(**{"Imm-Other": "x"})
    params = parse_signature(headers)
    assert params is not None and params[0].covered == ("imm-other", "nats-msg-id")
    assert params[0].expires - params[0].created == 60 and params[0].key_id == "k1"
    assert _verifies(signer, headers)
    assert not _verifies(signer, headers, subject=SUBJECT.replace("acme", "beta"))
    assert not _verifies(signer, headers, body=BODY + b"x")
    assert not _verifies(signer, {**headers, "Nats-Msg-Id": "start:r2"})
    later = headers[SIGNATURE_INPUT].replace("expires=", "expires=9")  # a longer life
    assert not _verifies(signer, {**headers, SIGNATURE_INPUT: later})
    other = Signer([SigningKey.generate("k1")])
    assert not _verifies(other, headers)  # the same key id, another key


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda v: v.replace('alg="ed25519"', 'alg="hmac-md5"'), "is not accepted"),
        (lambda v: v.replace('alg="ed25519"', 'alg="hmac-sha256"'), "only ed25519"),
        (lambda v: v.replace(";alg=", ';sid="AAAAAAAAAAAAAAAAAAAA";alg='), "goes in the Imm-Mac"),
        (lambda v: v.replace(";nonce=", ";nonc="), "missing: nonce"),
        (lambda v: v.replace('("@subject" ', "("), "@subject first"),
        (lambda v: v.replace('keyid="k1"', 'keyid="k 1"'), "not a valid key id"),
        (lambda v: v.replace(";created=", "; created="), "unreadable"),
        (lambda v: v.replace('"nats-msg-id"', '"Nats-Msg-Id"'), "lowercase"),
    ],
)
def test_an_odd_signature_input_is_malformed_with_a_reason(change: Any, problem: str) -> None:
    _, headers = _signed()
    headers[SIGNATURE_INPUT] = change(headers[SIGNATURE_INPUT])
    with pytest.raises(SignatureError, match=problem) as caught:
        parse_signature(headers)
    assert caught.value.refusal is SignatureRefusal.MALFORMED


def _maced(**headers: str) -> tuple[Session, dict[str, str]]:
    session = Session("S" * 22, secrets.token_bytes(32), "k1", time.monotonic() + 60)
    signer = Signer([SigningKey.generate("k1")])
    return session, signer.mac(session, SUBJECT, BODY, {"Nats-Msg-Id": "start:r1", **headers})


def _mac_holds(
    session: Session, headers: dict[str, str], subject: str = SUBJECT, body: bytes = BODY
) -> bool:
    found = parse_signature(headers)
    assert found is not None
    params, tag = found
    return hmac.compare_digest(
        hmac.digest(session.key, mac_base(subject, body, headers, params), "sha256"), tag
    )


def test_a_mac_is_one_compact_header_over_subject_body_headers_and_its_parameters() -> None:
    session, headers = _maced(**{"Imm-Other": "x"})
    assert set(headers) == {MAC, "Nats-Msg-Id", "Imm-Other"} and len(headers[MAC]) < 160
    found = parse_signature(headers)
    assert found is not None
    params = found[0]
    assert params.covered == ("imm-other", "nats-msg-id") and params.session == "S" * 22
    assert params.key_id == "k1" and params.alg == "hmac-sha256"
    assert params.expires - params.created == 60
    assert _mac_holds(session, headers)
    assert not _mac_holds(session, headers, subject=SUBJECT.replace("acme", "beta"))
    assert not _mac_holds(session, headers, body=BODY + b"x")
    assert not _mac_holds(session, {**headers, "Nats-Msg-Id": "start:r2"})
    later = headers[MAC].replace(f";{params.expires};", f";{params.expires + 900};")
    assert not _mac_holds(session, {**headers, MAC: later})  # a longer life
    other = Session("S" * 22, secrets.token_bytes(32), "k1", time.monotonic() + 60)
    assert not _mac_holds(other, headers)  # the same session id, another key


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda v: v + ";x", "unreadable"),
        (lambda v: "k 1" + v[2:], "not a valid key id"),
        (lambda v: v.replace("S" * 22, "S/S"), "16 to 64 base64url"),
        (lambda v: v.replace(";nats-msg-id;", ";Nats-Msg-Id;"), "lowercase"),
        (lambda v: v.replace(";nats-msg-id;", ";imm-mac;"), "cover themselves"),
        (lambda v: v.rsplit(";", 1)[0] + ";AAAA", "32 bytes"),
    ],
)
def test_an_odd_mac_header_is_malformed_with_a_reason(change: Any, problem: str) -> None:
    _, headers = _maced()
    headers[MAC] = change(headers[MAC])
    with pytest.raises(SignatureError, match=problem) as caught:
        parse_signature(headers)
    assert caught.value.refusal is SignatureRefusal.MALFORMED


def test_an_input_with_a_mac_and_a_signature_is_malformed() -> None:
    _, signed = _signed()
    _, maced = _maced()
    with pytest.raises(SignatureError, match="a MAC or a signature"):
        parse_signature({**signed, MAC: maced[MAC]})


def test_a_line_break_in_a_covered_header_cannot_forge_a_line() -> None:
    signer = Signer([SigningKey.generate("k1")])
    with pytest.raises(SignatureError, match="line break"):
        signer.sign(SUBJECT, BODY, {"Imm-X": 'a\n"@subject": imm.rpc.beta'})
    session = Session("S" * 22, secrets.token_bytes(32), "k1", time.monotonic() + 60)
    with pytest.raises(SignatureError, match="line break"):
        signer.mac(session, SUBJECT, BODY, {"Imm-X": "a\nimm.rpc.beta"})


def test_no_signature_headers_is_unsigned() -> None:
    assert parse_signature({"Nats-Msg-Id": "x"}) is None and parse_signature(None) is None
    with pytest.raises(SignatureError, match="unreadable"):
        parse_signature({SIGNATURE: "sig1=:AAAA:"})


def test_a_signer_moves_to_the_newest_key_once_it_may() -> None:
    now = [1000.0]
    k1, k2 = SigningKey.generate("k1"), SigningKey.generate("k2", not_before=1010.0)
    signer = Signer([k1, k2], clock=lambda: now[0])
    assert signer.current().key_id == "k1"
    now[0] = 1010.0
    assert signer.current().key_id == "k2"
    headers = signer.sign(SUBJECT, BODY)
    assert 'keyid="k2"' in headers[SIGNATURE_INPUT]
    with pytest.raises(SignatureError, match="not_before is ahead"):
        Signer([SigningKey.generate("k3", not_before=2000.0)], clock=lambda: 1.0).current()


def test_a_signer_from_a_file_or_the_environment(tmp_path: Any) -> None:
    key = SigningKey.generate("w1")
    path = tmp_path / "w1.json"
    path.write_text(json.dumps(key.to_json()))
    assert Signer.from_file(path).keys == [key]
    seed = key.to_json()["seed"]
    assert Signer.from_env({"IMMORTAL_SIGNING_KEY": f"w1:{seed}"}).keys == [key]  # type: ignore[union-attr]
    assert Signer.from_env({}) is None
    soon = SigningKey.generate("w2", not_before=time.time() + 3600)
    (tmp_path / "w2.json").write_text(json.dumps(soon.to_json()))
    both = Signer.from_env({"IMMORTAL_SIGNING_KEY_FILE": f"{path}, {tmp_path / 'w2.json'}"})
    assert both is not None and both.keys == [key, soon]
    assert both.current().key_id == "w1"  # w2 from its not_before on
    with pytest.raises(SignatureError, match="IMMORTAL_SIGNING_KEY"):
        Signer.from_env({"IMMORTAL_SIGNING_KEY": "w1:short"})
    with pytest.raises(SignatureError, match="signing key file"):
        Signer.from_file(tmp_path / "missing.json")
    assert seed not in repr(key) and seed not in repr(Signer([key]).keys)


def test_the_registry_names_the_key_in_each_refusal() -> None:
    k1 = RegisteredKey("k1", SigningKey.generate("k1").public_key, not_before=100.0)
    registry = KeyRegistry((k1,))
    assert registry.lookup("k1", 150.0) == k1
    with pytest.raises(SignatureError, match="key id 'k1' is not valid before") as early:
        registry.lookup("k1", 50.0)
    assert early.value.refusal is SignatureRefusal.KEY_NOT_YET_VALID
    with pytest.raises(SignatureError, match="key id 'k9' is not in the registry"):
        registry.lookup("k9", 150.0)
    retired = registry.retired("k1", at=200.0)
    assert retired.lookup("k1", 199.0) == retired.keys[0]
    with pytest.raises(SignatureError, match="key id 'k1' is retired"):
        retired.lookup("k1", 200.0)
    assert KeyRegistry.from_bytes(retired.to_bytes()) == retired
    with pytest.raises(ValueError, match="already registered"):
        registry.added(k1)
    with pytest.raises(ValueError, match="unreadable key registry"):
        KeyRegistry.from_bytes(b'{"keys": [{"key_id": "k1"}]}')


# -- a hub that requires signatures, auth off -----------------------------------------------


@pytest.fixture
async def strict_hub(nats_url: str) -> Any:
    h = Hub(nats_url, require_signatures=True)
    await h.start()
    yield h
    await h.stop()


async def test_require_signatures_refuses_unsigned_input_with_auth_off(
    nats_url: str, strict_hub: Hub
) -> None:
    key = SigningKey.generate("dev-1")
    async with Client(nats_url) as plain:
        kv = await key_value(plain.nc.jetstream(), plain.names.bucket_policy)
        registry = KeyRegistry((RegisteredKey("dev-1", key.public_key),))
        await kv.put(registry_key("default"), registry.to_bytes())
        for _ in range(100):
            if strict_hub._guard.signatures.registry("default").keys:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(SignatureError, match=r"signature refused \(unsigned\)"):
            await plain.start(three_step, 3, id="plain-1")
    from immortal_worker import Worker

    signed = ConnectSecurity(signer=Signer([key]))
    async with Client(nats_url, security=signed) as client:
        worker = Worker(nats_url, workflows=workflows, activities=_activities(), security=signed)
        await worker.start()
        try:
            handle = await client.start(three_step, 3, id="signed-1")
            assert await asyncio.wait_for(handle.result(), 30) == 15
            assert (await handle.history())[0].attrs["by"] == {"key_id": "dev-1"}
        finally:
            await worker.stop()


def _activities() -> list[Any]:
    from tests.workflows import activities

    return list(activities)


def test_a_hubs_rejection_text_becomes_the_typed_error() -> None:
    from immortal.security.signing import refusal_in

    found = refusal_in("signature refused (retired_key): key id 'k1' is retired")
    assert found is not None and found.refusal is SignatureRefusal.RETIRED_KEY
    assert found.key_id == "k1" and "key id 'k1' is retired" in str(found)
    assert refusal_in("run closed: workflow 'x' completed") is None


def test_a_mac_refused_as_unsigned_or_malformed_is_sent_again_with_ed25519() -> None:
    """A hub older than compact MACs reads no Imm-Mac (the input is unsigned to it), or one
    older still reads an odd signature: either way the sender signs it again."""
    _, maced = _maced()
    _, signed = _signed()
    for refusal in (SignatureRefusal.UNSIGNED, SignatureRefusal.MALFORMED):
        error = SignatureError(refusal, "refused")
        assert session_refused(error, maced) and not session_refused(error, signed)
    assert not session_refused(SignatureError(SignatureRefusal.REPLAY, "refused"), maced)
    assert session_refused(SignatureError(SignatureRefusal.UNKNOWN_SESSION, "gone"), signed)
