"""The runs index's records: what a hub writes when a run starts and when it closes.

A record is a small msgpack map; the subject it is stored on (``Names.run_open_subject``,
``Names.run_closed_subject``) carries what listings filter by. Readers decode only the
records they keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from immortal._codec import pack
from immortal._wire import RunState, RunStatus

__all__ = ["RunInfo", "closed_record", "open_record", "run_info"]


@dataclass(frozen=True)
class RunInfo:
    """One run as the runs index (or its history) knows it.

    ``continued_from`` and ``continued_to`` link the runs of a workflow id that continued
    as new; ``closed_at`` is None while the run is open.
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    queue: str
    status: RunStatus
    started_at: datetime
    closed_at: datetime | None = None
    continued_from: str | None = None
    continued_to: str | None = None


def open_record(state: RunState, continued_from: str | None) -> bytes:
    """The record of a run that has just started."""
    return pack({**_common(state), "continued_from": continued_from})


def closed_record(state: RunState, hist_seq: int, head: bytes) -> bytes:
    """The record of a run that has just closed, with where its history ends (``hist_seq``,
    and ``head``, the digest of its newest history message)."""
    return pack(
        {
            **_common(state),
            "closed_ts": state.closed_ts,
            "continued_to": state.continued_run_id,
            "hist_seq": hist_seq,
            "head": head,
        }
    )


def _common(state: RunState) -> dict[str, Any]:
    return {
        "workflow_id": state.workflow_id,
        "run_id": state.run_id,
        "workflow_type": state.workflow_type,
        "queue": state.queue,
        "status": str(state.status),
        "started_ts": state.started_ts,
    }


def run_info(raw: dict[str, Any]) -> RunInfo:
    """A decoded record as the API shows it."""
    closed = raw.get("closed_ts")
    return RunInfo(
        workflow_id=str(raw["workflow_id"]),
        run_id=str(raw["run_id"]),
        workflow_type=str(raw.get("workflow_type", "")),
        queue=str(raw.get("queue", "")),
        status=RunStatus(raw.get("status", "running")),
        started_at=_ts(int(raw.get("started_ts", 0))),
        closed_at=_ts(int(closed)) if closed else None,
        continued_from=raw.get("continued_from"),
        continued_to=raw.get("continued_to"),
    )


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
