"""What a live worker says of itself in ``imm-workers``, as the client reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["WorkerInfo", "worker_info"]


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker, as it registered itself in ``imm-workers``."""

    worker: str
    host: str
    pid: int
    version: str
    queues: list[str]
    workflows: list[str]
    activities: list[str]
    slots: dict[str, int]
    tasks_held: int
    last_seen: datetime
    # workflow:<name> / activity:<name> -> a hash, and the signature it was made of
    fingerprints: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)  # activity attempts: run/activity/attempt


def worker_info(raw: dict[str, Any]) -> WorkerInfo:
    return WorkerInfo(
        worker=str(raw.get("worker", "?")),
        host=str(raw.get("host", "?")),
        pid=int(raw.get("pid", 0)),
        version=str(raw.get("version", "?")),
        queues=list(raw.get("queues", [])),
        workflows=list(raw.get("workflows", [])),
        activities=list(raw.get("activities", [])),
        slots=dict(raw.get("slots", {})),
        tasks_held=len(raw.get("held", [])),
        last_seen=_ts(int(raw.get("ts", 0))),
        fingerprints=dict(raw.get("fingerprints", {})),
        signatures=dict(raw.get("signatures", {})),
        running=list(raw.get("running", [])),
    )


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
