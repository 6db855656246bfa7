"""The hub's side of the runs index (``IMM_RUNS``, read by ``immortal.runs``).

An open run is listed by a record on a subject of its own (``Names.run_open_subject``);
its close writes the closed record (on a subject shared by the runs of that status, queue
and type) and removes the open one, beside the closing emissions, awaited before the input
is acknowledged (a hub that dies in between is healed by the input's redelivery,
``reemit``).

A run is listed as open once it has lived ``list_after`` seconds (1 s by default; 0 lists
it with its start): every persisted write is an fsync, and most runs close sooner, so a
short run costs the closed record alone instead of three writes (measured: the three took
throughput to ~0.6x, docs/performance.md). Until then the run is *young*: its hub holds it
here, and holds its key's ``from_seq`` (``Pushes.hold``) at or below the start's append,
which carries ``UNLISTED_HEADER``; if the hub dies first, the hub that recovers its key
lists what is still open (``_push_recovery``). A hub that stops lists its young runs.
Whether a close must remove an open record: if the run is young here, no; if this hub does
not know it, only if the run is older than half of ``list_after`` (a run is listed by a hub
that saw it live that long, after checking its history says it is still open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NotFoundError

from immortal._jetstream import is_wrong_last_sequence, last_message
from immortal._names import Names
from immortal._requests import Requests
from immortal._transient import retry_transient
from immortal._wire import EventType, HistoryEvent, RunState, Transition, decode, now_ms
from immortal.runs import closed_record, open_record
from immortal_hub._push_recovery import UNLISTED_HEADER

__all__ = ["LIST_AFTER_S", "UNLISTED_HEADER", "RunsIndex"]

log = logging.getLogger(__name__)

LIST_AFTER_S = 1.0
_SWEEP_S = 0.2
_TOMBSTONE = {"Nats-Rollup": "sub", "Nats-TTL": "1s"}
T = TypeVar("T")


Write = Callable[[str, str, bytes, dict[str, str]], Awaitable[int]]


@dataclass
class _Young:
    tenant: str
    state: RunState
    continued_from: str | None
    floor: int  # the token of the hold on the hub key's from_seq
    born: float  # monotonic
    listing: asyncio.Future[None] | None = None


class RunsIndex:
    """``write(tenant, subject, data, headers)``: the hub's JetStream write (its gate);
    ``hold()`` / ``release(token)``: keep the hub key's ``from_seq`` where it is."""

    def __init__(
        self,
        nc: NATS,
        names: Names,
        write: Write,
        *,
        list_after: float = LIST_AFTER_S,
        hold: Callable[[], int] = lambda: 0,
        release: Callable[[int], None] = lambda token: None,
    ) -> None:
        self.nc = nc
        self.names = names
        self._write = write
        self.list_after = list_after
        self._hold, self._release = hold, release
        self._young: dict[str, _Young] = {}  # history subject -> a run not listed yet
        self._batches: set[asyncio.Task[None]] = set()
        self.listed_late = 0  # young runs listed (by age, at stop, or recovered), for tests

    @property
    def lazy(self) -> bool:
        return self.list_after > 0

    def young(self) -> int:
        return len(self._young)

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
        if self.lazy:
            return await self._young_start(tenant, state, from_run, append)
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

    async def _young_start(
        self, tenant: str, state: RunState, from_run: str | None, append: Awaitable[T]
    ) -> T:
        floor = self._hold()  # before the append: the key's from_seq stays at or below it
        try:
            appended = await append
        except BaseException:
            self._release(floor)
            raise
        if appended is None or state.status.closed:
            self._release(floor)  # not appended; or closed at once (its record says so)
        else:
            subject = self._subject(tenant, state)
            old = self._young.pop(subject, None)
            if old is not None:
                self._release(old.floor)
            self._young[subject] = _Young(tenant, state, from_run, floor, time.monotonic())
        return appended

    async def sweep(self, running: Callable[[], bool]) -> None:
        """List the young runs that have lived ``list_after``, until ``running()`` ends."""
        while running():
            await asyncio.sleep(_SWEEP_S)
            due = time.monotonic() - self.list_after
            found = []
            for k, y in self._young.items():  # in the order they started
                if y.born > due:
                    break
                found.append((k, y))
            self._list_young(found)

    async def flush(self) -> None:
        """List every young run now (the hub stops)."""
        self._list_young(list(self._young.items()))
        pending = [y.listing for y in self._young.values() if y.listing is not None]
        await asyncio.gather(*pending, return_exceptions=True)

    def _list_young(self, found: list[tuple[str, _Young]]) -> None:
        batch = [(k, y) for k, y in found if y.listing is None]
        if batch:
            loop = asyncio.get_running_loop()
            for _, y in batch:
                y.listing = loop.create_future()
            task = asyncio.ensure_future(self._list_batch(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _list_batch(self, batch: list[tuple[str, _Young]]) -> None:
        """List these young runs (in the order they started, so listings keep that order:
        the records' sequences are what readers order open runs by) but those that closed
        meanwhile, on another hub."""
        try:
            newest = await asyncio.gather(
                *(self._newest(subject) for subject, _ in batch), return_exceptions=True
            )
            writes = [
                asyncio.ensure_future(self.opened(y.tenant, y.state, y.continued_from))
                for (_, y), state in zip(batch, newest, strict=True)
                if not isinstance(state, BaseException) and not (state and state.status.closed)
            ]
            done = await asyncio.gather(*writes, return_exceptions=True)
            self.listed_late += sum(not isinstance(d, BaseException) for d in done)
            failed = any(isinstance(r, BaseException) for r in [*newest, *done])
        except Exception as exc:
            log.debug("listing young runs: %s", exc)
            failed = True
        for subject, y in batch:
            assert y.listing is not None
            y.listing.set_result(None)
            if self._young.get(subject) is not y:
                continue  # closed meanwhile (its close removed it)
            if failed:  # cut off: the next sweep tries them again (a listing is idempotent)
                y.listing = None
            else:
                del self._young[subject]
                self._release(y.floor)

    async def _newest(self, subject: str) -> RunState | None:
        msg = await last_message(self.nc, self.names.stream_history, subject)
        return decode(Transition, msg.data).state if msg is not None else None

    async def list_if_open(
        self, tenant: str, subject: str, state: RunState, continued_from: str | None
    ) -> None:
        """List the run unless its history says it closed (on another hub, meanwhile)."""
        newest = await retry_transient(
            lambda: last_message(self.nc, self.names.stream_history, subject), what=subject
        )
        if newest is not None and decode(Transition, newest.data).state.status.closed:
            return
        await self.opened(tenant, state, continued_from)
        self.listed_late += 1

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
        write = self._write(tenant, subject, record, headers)
        if await self._may_be_listed(tenant, state):
            await asyncio.gather(write, self.unlist(tenant, state))
        else:
            await write

    async def reemit(
        self, tenant: str, state: RunState, hist_seq: int, head: bytes, *, closing: bool
    ) -> None:
        """What the index may still lack after a hub died mid-input (the input is being
        redelivered): an open run's record; for a closed run, the removal of the open one,
        and, when the redelivered input is the one that closed it (``closing``), the
        closed record. Other late inputs of a closed run rewrite nothing: beyond the
        duplicate window a second closed record would be stored."""
        if not state.status.closed:
            # A young run is listed by the hub that holds it (or by the one that recovers
            # that hub); anyone lists it once it is older than half the delay, which is
            # when a close that does not know it removes an open record.
            if self._subject(tenant, state) not in self._young and self._old(state):
                await self.opened(tenant, state, None)
        elif closing:
            await self.closed(tenant, state, hist_seq, head)
        elif await self._may_be_listed(tenant, state):
            await self.unlist(tenant, state)

    async def _may_be_listed(self, tenant: str, state: RunState) -> bool:
        """Whether a closed run may have an open record to remove (see the module's doc)."""
        y = self._young.pop(self._subject(tenant, state), None)
        if y is not None:
            self._release(y.floor)
            if y.listing is None:
                # Not listed by us; past half the delay another hub may have (a duplicate
                # input's re-emission there), so the removal goes out then.
                return self._old(state)
            with contextlib.suppress(Exception):
                await y.listing  # the removal goes after it (or the listing is refused)
            return True
        return self._old(state)

    def _old(self, state: RunState) -> bool:
        """Older than half ``list_after``: it may have been listed by a hub that saw it."""
        return now_ms() - state.started_ts >= self.list_after * 500

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

    def _subject(self, tenant: str, state: RunState) -> str:
        return self.names.history_subject(tenant, state.workflow_id, state.run_id)

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
