"""The hub's side of the runs index (``IMM_RUNS``, read by ``immortal.runs``).

A run's start writes a record on a subject of its own (``Names.run_open_subject``), at
the same time as the start's append and before its first workflow task goes out, so the
run cannot close before it is listed. The close writes the closed record (on a subject
shared by the runs of that status, queue and type) and removes the open one, beside the
closing emissions. Both are awaited before the input is acknowledged; a hub that dies in
between is healed by the input's redelivery (``reemit``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NotFoundError

from immortal._jetstream import is_wrong_last_sequence
from immortal._names import Names
from immortal._requests import Requests
from immortal._transient import retry_transient
from immortal._wire import EventType, HistoryEvent, RunState
from immortal.runs import closed_record, open_record

__all__ = ["RunsIndex"]

_TOMBSTONE = {"Nats-Rollup": "sub", "Nats-TTL": "1s"}
T = TypeVar("T")


Write = Callable[[str, str, bytes, dict[str, str]], Awaitable[int]]


class RunsIndex:
    """``write(tenant, subject, data, headers)``: the hub's JetStream write (its gate)."""

    def __init__(self, nc: NATS, names: Names, write: Write) -> None:
        self.nc = nc
        self.names = names
        self._write = write

    async def alongside(
        self, tenant: str, state: RunState, events: list[HistoryEvent], append: Awaitable[T]
    ) -> T:
        """Await ``append``; if it appends a start, list the run meanwhile, and return only
        once the record is stored too (so the run's first workflow task goes out after it,
        and the run cannot close unlisted)."""
        started = next((e for e in events if e.type is EventType.WORKFLOW_STARTED), None)
        if started is None:
            return await append
        from_run = started.attrs.get("continued_from")
        listing = asyncio.ensure_future(self.opened(tenant, state, from_run))
        try:
            appended = await append
        except BaseException:
            await asyncio.wait([listing])
            if not listing.cancelled():
                listing.exception()  # seen; the append's failure is the one to report
            raise
        await listing  # if it failed, so does the input: its repeat re-emits the record
        return appended

    async def opened(self, tenant: str, state: RunState, continued_from: str | None) -> None:
        """List a run that starts. At most one record per run, ever: the publish expects
        the run's subject to be empty, so a repeat (or a re-emission) stores nothing."""
        subject = self._open_subject(tenant, state)
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        try:
            await self._write(tenant, subject, open_record(state, continued_from), headers)
        except APIError as exc:
            if not is_wrong_last_sequence(exc):
                raise

    async def closed(self, tenant: str, state: RunState, hist_seq: int, head: bytes) -> None:
        """A run closed: its closed record, and its open one removed."""
        subject = self.names.run_closed_subject(
            tenant, str(state.status), state.queue, state.workflow_type
        )
        record = closed_record(state, hist_seq, head)
        headers = {"Nats-Msg-Id": f"runs:{state.run_id}:closed"}  # a repeat stores it once
        await asyncio.gather(
            self._write(tenant, subject, record, headers), self.unlist(tenant, state)
        )

    async def reemit(
        self, tenant: str, state: RunState, hist_seq: int, head: bytes, *, closing: bool
    ) -> None:
        """What the index may still lack after a hub died mid-input (the input is being
        redelivered): an open run's record; for a closed run, the removal of the open one,
        and, when the redelivered input is the one that closed it (``closing``), the
        closed record. Other late inputs of a closed run rewrite nothing: beyond the
        duplicate window a second closed record would be stored."""
        if not state.status.closed:
            await self.opened(tenant, state, None)
        elif closing:
            await self.closed(tenant, state, hist_seq, head)
        else:
            await self.unlist(tenant, state)

    async def unlist(self, tenant: str, state: RunState) -> None:
        """Remove the run's open record: an empty message on its subject rolls the subject
        up (the record goes) and expires itself a second later. Measured on the server,
        this costs less than half a purge request (which is a JetStream API call)."""
        subject = self._open_subject(tenant, state)
        await self._write(tenant, subject, b"", dict(_TOMBSTONE))  # a repeat changes nothing

    async def forget(self, seq: int) -> None:
        """Remove a closed run's record, found by its sequence (retention ran out)."""
        try:
            await self._api(f"$JS.API.STREAM.MSG.DELETE.{self.names.stream_runs}", {"seq": seq})
        except NotFoundError:
            pass  # removed already (a redelivered expiry)

    def _open_subject(self, tenant: str, state: RunState) -> str:
        return self.names.run_open_subject(
            tenant, state.queue, state.workflow_type, state.workflow_id, state.run_id
        )

    async def _api(self, subject: str, request: dict[str, object]) -> None:
        requests = Requests.of(self.nc)

        async def call() -> None:
            reply = json.loads((await requests.request(subject, json.dumps(request).encode())).data)
            if "error" in reply:
                APIError.from_error(reply["error"])  # raises the typed error

        await retry_transient(call, what=subject)
