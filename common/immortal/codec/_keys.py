"""The key ring: ``{key id: 32-byte key}`` and which key seals new payloads.

A ring comes from a JSON file, the environment or a callable (a KMS). Rotation: add the
new key as current and keep the old one, so new payloads are sealed with the new key and
old ones still open; remove the old key only once nothing sealed with it is read any more.

File (or ``IMMORTAL_CODEC_KEYS``): ``{"current": "k2", "keys": {"k1": "<base64>",
"k2": "<base64>"}}``; the environment also takes ``k2=<base64>,k1=<base64>`` (the first is
current). ``IMMORTAL_CODEC_KEYS_FILE`` names a file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from immortal.codec._errors import KeyRingError

__all__ = ["ENV_KEYS", "ENV_KEYS_FILE", "KEY_BYTES", "KeyRing", "new_key"]

ENV_KEYS = "IMMORTAL_CODEC_KEYS"
ENV_KEYS_FILE = "IMMORTAL_CODEC_KEYS_FILE"
KEY_BYTES = 32  # AES-256
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

KeyFetch = Callable[[str], bytes | None]


def new_key() -> str:
    """A fresh random key, base64-encoded, for a ring file."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


class KeyRing:
    """Keys by id; ``current`` seals, every key opens.

    >>> ring = KeyRing({"k1": bytes(32)}, current="k1")
    >>> ring.current_id
    'k1'
    """

    def __init__(self, keys: Mapping[str, bytes], *, current: str) -> None:
        self._keys = {_check_id(k): _check_key(k, v) for k, v in keys.items()}
        if current not in self._keys:
            raise KeyRingError(f"the current key {current!r} is not in the ring", key_id=current)
        self._current = current
        self._fetch: KeyFetch | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_callable(cls, fetch: KeyFetch, *, current: str) -> KeyRing:
        """A ring whose keys come from ``fetch(key_id)`` (a KMS; None: no such key), each
        asked once and kept in memory."""
        first = fetch(current)
        if first is None:
            raise KeyRingError(f"the key source has no current key {current!r}", key_id=current)
        ring = cls({current: first}, current=current)
        ring._fetch = fetch
        return ring

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeyRingError(f"cannot read the key ring {path}: {exc.strerror}") from exc
        return cls.parse(text, where=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing | None:
        """The ring in ``IMMORTAL_CODEC_KEYS`` or the file ``IMMORTAL_CODEC_KEYS_FILE``
        names; None if neither is set."""
        env = os.environ if environ is None else environ
        if env.get(ENV_KEYS):
            return cls.parse(env[ENV_KEYS], where=ENV_KEYS)
        if env.get(ENV_KEYS_FILE):
            return cls.from_file(env[ENV_KEYS_FILE])
        return None

    @classmethod
    def parse(cls, text: str, *, where: str = "the key ring") -> KeyRing:
        text = text.strip()
        if text.startswith("{"):
            try:
                raw: Any = json.loads(text)
            except ValueError as exc:
                raise KeyRingError(f"{where} is not valid JSON: {exc}") from exc
            if not isinstance(raw, dict) or not isinstance(raw.get("keys"), dict):
                raise KeyRingError(f'{where} must be {{"current": id, "keys": {{id: base64}}}}')
            keys = {str(k): _b64(where, str(k), v) for k, v in raw["keys"].items()}
            current = str(raw.get("current") or next(iter(keys), ""))
            return cls(keys, current=current)
        pairs = [p.strip() for p in text.split(",") if p.strip()]
        if not pairs or any("=" not in p for p in pairs):
            raise KeyRingError(f"{where} must be JSON or id=base64[,id=base64...]")
        items = [p.split("=", 1) for p in pairs]
        for i, (_, v) in enumerate(items, 1):
            if not v.strip():  # a bare base64 key (it ends in "="): never echo it back
                raise KeyRingError(f"{where}: entry {i} has no key after '=' (write id=base64)")
        keys = {k.strip(): _b64(where, k.strip(), v.strip()) for k, v in items}
        return cls(keys, current=items[0][0].strip())

    @property
    def current_id(self) -> str:
        return self._current

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def current(self) -> tuple[str, bytes]:
        return self._current, self._keys[self._current]

    def get(self, key_id: str) -> bytes | None:
        key = self._keys.get(key_id)
        if key is None and self._fetch is not None and _KEY_ID.match(key_id):
            with self._lock:
                fetched = self._fetch(key_id)
                if fetched is not None:
                    key = self._keys[key_id] = _check_key(key_id, fetched)
        return key

    def __repr__(self) -> str:  # never the keys themselves
        return f"KeyRing(current={self._current!r}, ids={self.ids!r})"


def _shown(key_id: str) -> str:
    """A key id as an error may show it: a long malformed one is likely a key pasted in
    the wrong place (a bare base64 key reads as an id ending before its "=")."""
    return (
        repr(key_id)
        if _KEY_ID.match(key_id) or len(key_id) <= 16
        else f"({len(key_id)} characters)"
    )


def _check_id(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise KeyRingError(f"key id {_shown(key_id)} must be 1-64 of A-Z a-z 0-9 . _ -")
    return key_id


def _check_key(key_id: str, key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes) else type(key).__name__
        raise KeyRingError(
            f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256), not {size}", key_id=key_id
        )
    return key


def _b64(where: str, key_id: str, value: Any) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyRingError(f"key {_shown(key_id)} in {where} is not base64") from exc
