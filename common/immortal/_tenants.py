"""Per-tenant settings kept in the ``imm-policy`` bucket: retention of history and logs.

A tenant's retention applies to closed runs: when a run closes, its hub arms two durable
timers (one for the history, one for the logs); when they fire, the run's history or log
subject is purged, and the runs index forgets the run. Without a setting, the streams'
own limits apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from nats.js.errors import KeyNotFoundError
from nats.js.errors import NotFoundError as JsNotFound
from nats.js.kv import KeyValue

from immortal._codec import pack, unpack
from immortal._names import Names
from immortal._timers import seconds
from immortal._transient import retry_transient

__all__ = ["Retention", "read_retention", "write_retention"]


@dataclass(frozen=True)
class Retention:
    """Seconds a closed run's history and logs are kept (None: the stream limits)."""

    history: float | None = None
    logs: float | None = None


def _key(names: Names, tenant: str) -> str:
    return f"{tenant}.retention"


def _positive(value: float | timedelta | None) -> float | None:
    value = seconds(value)
    if value is not None and value <= 0:
        raise ValueError("retention must be positive")
    return value


async def read_retention(kv: KeyValue, names: Names, tenant: str) -> Retention:
    try:
        entry = await retry_transient(lambda: kv.get(_key(names, tenant)), what="retention")
    except (KeyNotFoundError, JsNotFound):
        return Retention()
    raw = unpack(entry.value or b"")
    return Retention(history=raw.get("history"), logs=raw.get("logs"))


async def write_retention(
    kv: KeyValue,
    names: Names,
    tenant: str,
    history: float | timedelta | None,
    logs: float | timedelta | None,
) -> Retention:
    retention = Retention(history=_positive(history), logs=_positive(logs))
    await kv.put(_key(names, tenant), pack(retention.__dict__))
    return retention
