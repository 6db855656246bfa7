"""NATS's own JWTs (``alg: ed25519-nkey``), which pyjwt cannot sign: a JSON header and
claims, base64url, and an Ed25519 signature by an nkey (the ``nkeys`` package). Small on
purpose: the auth service signs two kinds (user, authorization response) and reads one
(the server's authorization request)."""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
import uuid
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

__all__ = ["NatsJwtError", "decode", "encode", "new_account_seed", "public_key"]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class NatsJwtError(ValueError):
    pass


def new_account_seed() -> str:
    """A fresh account nkey seed (``SA...``): the auth service's signing identity."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)).decode()


def public_key(seed: str) -> str:
    """The public key (``A...``) of a seed: what the server config names as ``issuer``."""
    return bytes(nkeys.from_seed(seed.encode()).public_key).decode()


def encode(claims: dict[str, Any], seed: str) -> str:
    """Sign ``claims`` (``iss`` set to the seed's public key, ``iat`` and ``jti`` added)."""
    pair = nkeys.from_seed(seed.encode())
    body = {"jti": uuid.uuid4().hex, "iat": int(time.time()), **claims}
    body["iss"] = bytes(pair.public_key).decode()
    signing_input = f"{_b64(json.dumps(_HEADER))}.{_b64(json.dumps(body))}"
    return f"{signing_input}.{_b64(pair.sign(signing_input.encode()))}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a NATS JWT, after checking it is signed by the key its ``iss`` names."""
    try:
        header_b64, claims_b64, sig_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims: dict[str, Any] = json.loads(_unb64(claims_b64))
        signature = _unb64(sig_b64)
    except (ValueError, binascii.Error) as exc:
        raise NatsJwtError(f"malformed NATS JWT: {exc}") from exc
    if header.get("alg") != _HEADER["alg"]:
        raise NatsJwtError(f"unexpected NATS JWT algorithm {header.get('alg')!r}")
    try:
        verify_key = nacl.signing.VerifyKey(_raw_public_key(str(claims.get("iss", ""))))
        verify_key.verify(f"{header_b64}.{claims_b64}".encode(), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise NatsJwtError(f"NATS JWT signature does not verify: {exc}") from exc
    return claims


def _raw_public_key(encoded: str) -> bytes:
    raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    if len(raw) != 35:
        raise ValueError("not an nkey public key")
    return raw[1:33]  # prefix byte, 32 key bytes, CRC-16


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
