"""Finding one closed run's record in the index: for ``verify`` (the head digest it
anchors) and for retention (the record goes with the history)."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from immortal._codec import unpack
from immortal._jetstream import StoredMsg, read_since
from immortal._names import Names
from immortal._wire import RunState

__all__ = ["find_closed_record"]

# A closed run's record is stored right after its closing append: look from a little
# before the close (as the hub's clock had it) to a little after.
_AROUND_MS = 5_000


async def find_closed_record(
    nc: NATS, names: Names, tenant: str, state: RunState
) -> tuple[StoredMsg, dict[str, object]] | None:
    """The index record of the closed run ``state`` describes, and its fields; None if
    there is none (the run is open, or its record was removed)."""
    if not state.status.closed or state.closed_ts is None:
        return None
    subject = names.run_closed_subject(tenant, str(state.status), state.queue, state.workflow_type)
    since = datetime.fromtimestamp((state.closed_ts - _AROUND_MS) / 1000, tz=UTC)
    async for msg in read_since(nc, names.stream_runs, subject, since):
        raw = unpack(msg.data)
        if raw.get("run_id") == state.run_id:
            return msg, raw
        if int(raw.get("closed_ts") or 0) > state.closed_ts + _AROUND_MS:
            return None
    return None
