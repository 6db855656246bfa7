"""The payload codec on its own: key rings, sealing, binding, errors (no server needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from immortal import ImmortalError, PayloadError
from immortal._codec import encode_value, unpack
from immortal._wire import Failure
from immortal.codec import (
    ENV_KEYS,
    ENV_KEYS_FILE,
    AesGcmCodec,
    Binding,
    CiphertextRefusedError,
    KeyNotInRingError,
    KeyRing,
    KeyRingError,
    PayloadCodec,
    is_sealed,
    key_id_of,
    new_key,
)
from immortal.codec._sealing import open_failure, open_payload, seal_failure

K1, K2 = bytes(range(32)), bytes(range(32, 64))
HERE = Binding("acme", "order-42", "run-1", "input")


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_round_trip_names_its_key_and_hides_the_plaintext() -> None:
    codec = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    assert isinstance(codec, PayloadCodec)
    data = encode_value({"card": "4111-1111"})
    sealed = codec.encode(data, HERE)
    assert is_sealed(sealed) and key_id_of(sealed) == "k1"
    assert b"4111" not in sealed
    assert codec.decode(sealed, HERE) == data
    assert codec.encode(data, HERE) != sealed  # a fresh nonce each time


@pytest.mark.parametrize(
    "moved",
    [
        Binding("acme", "order-42", "run-2", "input"),  # another run
        Binding("acme", "order-43", "run-1", "input"),  # another workflow
        Binding("other", "order-42", "run-1", "input"),  # another tenant
        Binding("acme", "order-42", "run-1", "result"),  # another field
    ],
)
def test_a_moved_ciphertext_is_refused(moved: Binding) -> None:
    codec = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    sealed = codec.encode(b"\x01", HERE)
    with pytest.raises(CiphertextRefusedError) as caught:
        codec.decode(sealed, moved)
    assert caught.value.field == moved.field and caught.value.key_id == "k1"
    assert f"{moved.field} of run {moved.run_id}" in str(caught.value)
    assert isinstance(caught.value, ImmortalError) and isinstance(caught.value, PayloadError)


def test_tampered_bytes_and_a_forged_key_id_are_refused() -> None:
    codec = AesGcmCodec(KeyRing({"k1": K1, "k2": K2}, current="k1"))
    sealed = bytearray(codec.encode(b"\x01\x02\x03", HERE))
    sealed[-1] ^= 1
    with pytest.raises(CiphertextRefusedError, match="altered, or moved"):
        codec.decode(bytes(sealed), HERE)
    relabelled = codec.encode(b"\x01", HERE).replace(b"\x02k1", b"\x02k2", 1)
    with pytest.raises(CiphertextRefusedError, match="key 'k2'"):
        codec.decode(relabelled, HERE)


def test_unknown_key_id_names_the_field_and_the_key() -> None:
    old = AesGcmCodec(KeyRing({"k0": K2}, current="k0")).encode(b"\x01", HERE)
    codec = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    with pytest.raises(KeyNotInRingError) as caught:
        codec.decode(old, HERE)
    assert (caught.value.field, caught.value.key_id) == ("input", "k0")
    assert "sealed with key 'k0', which is not in the key ring (it holds k1)" in str(caught.value)
    with pytest.raises(KeyNotInRingError, match="no key ring is configured"):
        open_payload(None, HERE, old)


def test_rotation_seals_with_the_current_key_and_opens_with_any() -> None:
    before = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    after = AesGcmCodec(KeyRing({"k1": K1, "k2": K2}, current="k2"))
    old = before.encode(b"\x01", HERE)
    new = after.encode(b"\x02", HERE)
    assert key_id_of(new) == "k2"
    assert after.decode(old, HERE) == b"\x01"
    with pytest.raises(KeyNotInRingError):
        before.decode(new, HERE)


def test_plain_payloads_pass_through() -> None:
    codec = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    assert open_payload(codec, HERE, b"\x91\x01") == b"\x91\x01"
    assert open_payload(codec, HERE, None) is None


def test_failures_keep_type_and_flag_plain() -> None:
    codec = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    failure = Failure(
        type="CardDeclined", message="card 4111 declined", non_retryable=True,
        details={"card": "4111"}, traceback="Traceback ... 4111",
        cause=Failure(type="Inner", message="inner 4111"),
    )  # fmt: skip
    where = HERE.at("activity:3:failure")
    sealed = seal_failure(codec, where, failure)
    wire = sealed.model_dump(exclude_defaults=True)
    assert wire["type"] == "CardDeclined" and wire["non_retryable"] is True
    assert wire["message"] == "<encrypted (key k1)>"
    assert b"4111" not in json.dumps({k: v for k, v in wire.items() if k != "sealed"}).encode()
    opened = open_failure(codec, where, wire)
    assert opened["message"] == "card 4111 declined" and opened["details"] == {"card": "4111"}
    assert opened["cause"]["message"] == "inner 4111"
    with pytest.raises(CiphertextRefusedError):
        open_failure(codec, HERE.at("failure"), wire)


def test_key_rings_from_file_env_and_callable(tmp_path: Path) -> None:
    ring_file = tmp_path / "keys.json"
    ring_file.write_text(json.dumps({"current": "k2", "keys": {"k1": b64(K1), "k2": b64(K2)}}))
    ring = KeyRing.from_file(ring_file)
    assert (ring.current_id, ring.ids) == ("k2", ["k1", "k2"])
    assert "AAEC" not in repr(ring) and b64(K1) not in repr(ring)
    compact = KeyRing.from_env({ENV_KEYS: f"k2={b64(K2)},k1={b64(K1)}"})
    assert compact is not None and compact.current() == ("k2", K2) and compact.get("k1") == K1
    by_file = KeyRing.from_env({ENV_KEYS_FILE: str(ring_file)})
    assert by_file is not None and by_file.current_id == "k2"
    assert KeyRing.from_env({}) is None
    asked: list[str] = []

    def kms(key_id: str) -> bytes | None:
        asked.append(key_id)
        return {"k1": K1, "k2": K2}.get(key_id)

    remote = KeyRing.from_callable(kms, current="k2")
    assert remote.get("k1") == K1 and remote.get("k1") == K1 and remote.get("k9") is None
    assert asked == ["k2", "k1", "k9"]  # each key asked once
    assert len(base64.b64decode(new_key())) == 32


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"keys": {"k1": "c2hvcnQ="}}', "must be 32 bytes"),
        ('{"current": "k3", "keys": {"k1": "' + b64(K1) + '"}}', "current key 'k3' is not"),
        ('{"keys": {"k1": "not base64!"}}', "is not base64"),
        ('{"keys": [1]}', "must be"),
        ("{nope", "not valid JSON"),
        ("k1", "JSON or id=base64"),
        ("bad id!=" + b64(K1), "key id 'bad id!'"),
    ],
)
def test_bad_key_rings_are_refused_clearly(text: str, error: str) -> None:
    with pytest.raises(KeyRingError, match=error):
        KeyRing.parse(text)


def test_missing_ring_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="cannot read the key ring"):
        KeyRing.from_file(tmp_path / "nope.json")


def test_digest_is_keyed_and_stable() -> None:
    codec = AesGcmCodec(KeyRing({"k1": K1}, current="k1"))
    other = AesGcmCodec(KeyRing({"k1": K2}, current="k1"))
    assert codec.digest(b"hello") == codec.digest(b"hello") != other.digest(b"hello")
    assert codec.digest(b"hello") != codec.digest(b"hullo")
    assert unpack(encode_value(1)) == 1


def test_the_package_exports() -> None:
    import immortal.codec

    assert sorted(immortal.codec.__all__) == sorted(
        ["ENV_KEYS", "ENV_KEYS_FILE", "AesGcmCodec", "Binding", "CiphertextRefusedError",
         "CodecError", "KeyNotInRingError", "KeyRing", "KeyRingError", "PayloadCodec",
         "codec_from_env", "is_sealed", "key_id_of", "new_key", "reveal_events", "reveal_log",
         "unreadable"]
    )  # fmt: skip


def test_keygen_prints_a_ring_and_serve_needs_auth(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("IMMORTAL_")}
    made = subprocess.run(
        [sys.executable, "-m", "immortal_hub", "codec", "keygen", "k7"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ring = KeyRing.parse(made.stdout)
    assert ring.current_id == "k7" and len(ring.current()[1]) == 32
    (tmp_path / "ring.json").write_text(made.stdout)
    refused = subprocess.run(
        [sys.executable, "-m", "immortal_hub", "codec", "serve", "--ring",
         f"acme={tmp_path / 'ring.json'}"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    said = " ".join(refused.stderr.replace("│", " ").split())
    assert refused.returncode == 2 and "decodes only for verified tokens" in said, said
    assert "Traceback" not in refused.stderr
