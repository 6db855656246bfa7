"""Listing runs newest first, filtered and paged, from the runs index (``IMM_RUNS``).

The index holds one record per open run, on a subject of its own that the hub removes when
the run closes, and one record per closed run, on a subject per (status, queue, type). So
a listing is a subject filter and a read backwards (``read_newest``): the server skips
what does not match, and ``--status running`` stays fast however many closed runs there
are. Open runs come first, newest started first; then closed runs, newest closed first
(Temporal's order). Start-time bounds are checked per record, and a listing with a lower
bound stops where records get older than it. An open run's record is checked against its
history (one request per page), so a record left behind by a rare race (see
docs/architecture.md) never shows a closed run as running.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from nats.aio.client import Client as NATS

from immortal._codec import unpack
from immortal._errors import InvalidQueryError
from immortal._jetstream import last_per_subject, read_newest
from immortal._names import Names
from immortal._wire import RunStatus
from immortal.runs._record import RunInfo, run_info

__all__ = ["CLOSED_STATUSES", "MAX_LIMIT", "RunPage", "list_runs", "parse_status"]

Phase = Literal["open", "closed"]
CLOSED_STATUSES = tuple(s.value for s in RunStatus if s.closed)
MAX_LIMIT = 1000
_ALIASES = {"canceled": "cancelled", "continued": "continued_as_new", "open": "running"}
_TOKEN = re.compile(r"^(open|closed):([1-9][0-9]*)$")
# Records are in the order hubs wrote them, stamped by the hubs' clocks: a listing bounded
# below stops only once records are older than the bound by more than hosts' clocks differ.
_SKEW_MS = 60_000

_Record = tuple[int, dict[str, Any]]  # (index sequence, decoded record)


@dataclass(frozen=True)
class RunPage:
    """One page of :meth:`Client.list_workflows`; pass ``next_page_token`` for the next
    (None: this was the last page)."""

    runs: list[RunInfo]
    next_page_token: str | None


def parse_status(status: str | None) -> tuple[list[Phase], str | None]:
    """The phases of the index a status filter reads, and the closed status it names.

    ``running`` (or ``open``), ``closed`` (any closed run), or a closed status; both
    spellings of cancelled are accepted.
    """
    if status is None:
        return ["open", "closed"], None
    wanted = _ALIASES.get(status.lower(), status.lower())
    if wanted == "running":
        return ["open"], None
    if wanted == "closed":
        return ["closed"], None
    if wanted in CLOSED_STATUSES:
        return ["closed"], wanted
    raise InvalidQueryError(
        f"unknown status {status!r}: use running, completed, failed, cancelled, terminated, "
        "continued_as_new or closed"
    )


async def list_runs(
    nc: NATS,
    names: Names,
    tenant: str,
    *,
    status: str | None = None,
    workflow_type: str | None = None,
    queue: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    limit: int = 50,
    page_token: str | None = None,
) -> RunPage:
    """See :meth:`Client.list_workflows`."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
    phases, closed_status = parse_status(status)
    phase, below = _parse_token(page_token, phases)
    bounds = _Bounds(_ms(started_after), _ms(started_before))
    page = _Page(limit)
    for ph in phases[phases.index(phase) :]:
        subject = names.runs_filter(
            tenant,
            ph,
            status=closed_status if ph == "closed" else None,
            queue=queue,
            workflow_type=workflow_type,
        )
        records = _records(nc, names.stream_runs, subject, below, limit, bounds, ph)
        if ph == "open":
            records = _still_open(nc, names, tenant, records, limit + 1)
        async with contextlib.aclosing(records) as found:
            async for seq, raw in found:
                if not page.add(ph, seq, raw):
                    return RunPage(page.runs, page.token())
        below = None
    return RunPage(page.runs, None)


async def _records(
    nc: NATS, stream: str, subject: str, below: int | None, limit: int, bounds: _Bounds, ph: Phase
) -> AsyncGenerator[_Record, None]:
    """The records on ``subject`` below sequence ``below``, newest first, within bounds."""
    reading = read_newest(nc, stream, subject, before=below, want=limit + 1)
    async with contextlib.aclosing(reading) as messages:
        async for msg in messages:
            if not msg.data:
                continue  # what removed a closed run's open record, expiring
            raw = unpack(msg.data)
            if bounds.past(ph, raw):
                return
            if bounds.keeps(raw):
                yield msg.seq, raw


async def _still_open(
    nc: NATS, names: Names, tenant: str, records: AsyncGenerator[_Record, None], chunk: int
) -> AsyncGenerator[_Record, None]:
    """The open records whose run's history says it is running, checked a chunk at a time
    (one request each); a run whose history does not exist yet is left out too."""
    async with contextlib.aclosing(records) as found:
        pending: list[_Record] = []
        async for record in found:
            pending.append(record)
            if len(pending) == chunk:
                for kept in await _check(nc, names, tenant, pending):
                    yield kept
                pending = []
        for kept in await _check(nc, names, tenant, pending) if pending else []:
            yield kept


async def _check(nc: NATS, names: Names, tenant: str, records: list[_Record]) -> list[_Record]:
    subjects = {
        names.history_subject(tenant, str(raw["workflow_id"]), str(raw["run_id"])): (seq, raw)
        for seq, raw in records
    }
    running = set()
    for msg in await last_per_subject(nc, names.stream_history, list(subjects)):
        if unpack(msg.data).get("state", {}).get("status", "running") == "running":
            running.add(msg.subject)
    return [record for subject, record in subjects.items() if subject in running]


@dataclass
class _Bounds:
    after: int | None
    before: int | None

    def past(self, phase: Phase, raw: dict[str, Any]) -> bool:
        """Whether this record and every older one started before ``after``: open runs are
        in start order, closed ones in close order (and a run starts before it closes)."""
        if self.after is None:
            return False
        ts = raw.get("started_ts") if phase == "open" else raw.get("closed_ts")
        return int(ts or 0) + _SKEW_MS < self.after

    def keeps(self, raw: dict[str, Any]) -> bool:
        started = int(raw.get("started_ts") or 0)
        if self.after is not None and started < self.after:
            return False
        return self.before is None or started < self.before


class _Page:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.runs: list[RunInfo] = []
        self._seen: set[str] = set()
        self._last: tuple[Phase, int] | None = None

    def add(self, phase: Phase, seq: int, raw: dict[str, Any]) -> bool:
        """Keep a record; False when the page is already full (so there is a next one)."""
        run_id = str(raw.get("run_id"))
        if run_id in self._seen:  # a record written twice (a re-emission)
            return True
        if len(self.runs) == self.limit:
            return False
        self._seen.add(run_id)
        self.runs.append(run_info(raw))
        self._last = (phase, seq)
        return True

    def token(self) -> str:
        assert self._last is not None
        return f"{self._last[0]}:{self._last[1]}"


def _parse_token(token: str | None, phases: list[Phase]) -> tuple[Phase, int | None]:
    if token is None:
        return phases[0], None
    match = _TOKEN.match(token)
    if match is None or match[1] not in phases:
        raise InvalidQueryError(f"invalid page token {token!r} for this listing")
    phase: Phase = "open" if match[1] == "open" else "closed"
    return phase, int(match[2])


def _ms(at: datetime | None) -> int | None:
    return None if at is None else round(at.timestamp() * 1000)
