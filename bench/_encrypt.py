"""``--encrypt``: the workloads again with payloads encrypted (``immortal.codec``), and
what that costs beside the plain pass, on the same server in the same run.

The client seals with the codec in process; the workers get the key ring in their
environment (``IMMORTAL_CODEC_KEYS``); the hubs get none: they never need plaintext.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from immortal.codec import ENV_KEYS, AesGcmCodec, KeyRing

__all__ = ["SUFFIX", "compare", "key_ring"]

SUFFIX = " [encrypted]"


def key_ring() -> tuple[AesGcmCodec, dict[str, str]]:
    """A fresh one-key ring: the client's codec, and the workers' environment."""
    key = secrets.token_bytes(32)
    codec = AesGcmCodec(KeyRing({"bench": key}, current="bench"))
    return codec, {ENV_KEYS: f"bench={base64.b64encode(key).decode()}"}


def compare(metrics: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """(name, unit, value, target) of what encryption costs, from both passes' metrics."""

    def median(name: str) -> float | None:
        m = metrics.get(name)
        if m is None or not m.values:
            return None
        v = sorted(m.values)
        return float(v[len(v) // 2])

    out = []
    off, on = median("1 activity: completed"), median("1 activity: completed" + SUFFIX)
    if off and on:
        out.append(("encrypted / plain: throughput kept", "%", 100 * on / off, ">= 85"))
    off, on = median("unloaded latency p50"), median("unloaded latency p50" + SUFFIX)
    if off is not None and on is not None:
        out.append(("encrypted: unloaded p50 added", "ms", on - off, "<= 1"))
    return out
