"""``--encrypt``: the workloads again with payloads encrypted (``immortal.codec``), and
what that costs beside the plain pass, on the same server in the same run.

The client seals with the codec in process; the workers get the key ring in their
environment (``IMMORTAL_CODEC_KEYS``); the hubs get none: they never need plaintext.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from bench._harness import Cost, cost
from immortal.codec import ENV_KEYS, AesGcmCodec, KeyRing

__all__ = ["SUFFIX", "compare", "key_ring"]

SUFFIX = " [encrypted]"


def key_ring() -> tuple[AesGcmCodec, dict[str, str]]:
    """A fresh one-key ring: the client's codec, and the workers' environment."""
    key = secrets.token_bytes(32)
    codec = AesGcmCodec(KeyRing({"bench": key}, current="bench"))
    return codec, {ENV_KEYS: f"bench={base64.b64encode(key).decode()}"}


def compare(metrics: dict[str, Any]) -> list[Cost]:
    """What encryption costs, from both passes' metrics."""
    kept, added = "encrypted / plain: throughput kept", "encrypted: unloaded p50 added"
    return cost(metrics, SUFFIX, "", kept, added)
