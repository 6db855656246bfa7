"""Recovering the pushed workflow tasks of hubs that died (the third party of ``_push``).

A hub whose key in ``imm-hubs`` went unchanged for ``HUB_DEAD_S`` is dead; one live hub
claims its key (an update expecting the revision it saw), reads the history from the key's
``from_seq`` on, takes the transitions the dead hub appended with a push intended (header
``Imm-Push: <hub>``) whose workflow task history still shows open, and publishes each
durably; then it deletes the key.

That read may be long (a dead hub's ``from_seq`` trails by up to the 30 s a taken task may
take, and a key left by hubs all down at once trails further), and the claimer may die
before it ends: hubs killed every few seconds each claimed such keys and died mid-read, and
nobody ever finished (the chaos suite's hub-sigkill stranded runs this way). So the read
keeps its progress in the key: every ``CHUNK`` messages, once the tasks found so far are
published, the claimer moves the key's ``from_seq`` past them (an update expecting its own
revision), and a hub that takes a stale claim over resumes where the last one stopped.
All the dead keys a hub sees at once are recovered by one read from the lowest of them.

The same read lists a dead hub's young runs (``_runs_index``): starts it appended with
``Imm-Unlisted: <hub>`` whose run is still open get their open record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from immortal._codec import pack, unpack
from immortal._errors import PayloadError
from immortal._jetstream import last_message, read_subject
from immortal._names import Names
from immortal._wire import EventType, RunState, Transition, decode
from immortal_hub._emissions import Emission, workflow_task_emission

__all__ = ["CHUNK", "PUSH_HEADER", "UNLISTED_HEADER", "ListRun", "Recovery"]

log = logging.getLogger(__name__)

CHUNK = 2048  # history messages read between two marks of progress in the claimed keys
PUSH_HEADER = "Imm-Push"  # on an append whose workflow task its hub may push: the hub id
UNLISTED_HEADER = "Imm-Unlisted"  # on a start's append whose run its hub lists later
Durable = Callable[[str, Emission], Awaitable[None]]
# (tenant, history subject, state, continued_from): list the run unless it closed
ListRun = Callable[[str, str, RunState, str | None], Awaitable[None]]


@dataclass
class _Claim:
    key: str
    hub: str  # the dead hub's id
    revision: int  # of our claim (or our last mark of progress)
    from_seq: int
    record: dict[str, Any]


class Recovery:
    """Claims dead hubs' keys and publishes their open pushed tasks durably."""

    def __init__(
        self,
        nc: Any,
        kv: KeyValue,
        names: Names,
        hub_id: str,
        durable: Durable,
        list_run: ListRun | None = None,
    ) -> None:
        self.nc = nc
        self.kv = kv
        self.names = names
        self.hub_id = hub_id
        self._durable = durable
        self._list_run = list_run
        self.recovered = 0  # tasks published durably, for tests
        self.listed = 0  # young runs of dead hubs listed, for tests

    async def recover(self, stale: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Recover the hubs of ``stale`` keys (key, revision seen); returns those to try
        again later (a claim cut off by an outage)."""
        claims: list[_Claim] = []
        again: list[tuple[str, int]] = []
        for key, revision in stale:
            try:
                claim = await self._claim(key, revision)
            except Exception as exc:  # cut off (an election, a reconnect): claim it later
                log.debug("claiming hub key %s: %s", key, exc)
                again.append((key, revision))
                continue
            if claim is not None:
                claims.append(claim)
        if not claims:
            return again
        hubs = ", ".join(sorted(c.hub for c in claims))
        log.warning("hub(s) %s gone; publishing their pushed workflow tasks durably", hubs)
        try:
            await self._republish(claims)
        except Exception as exc:  # the claims go stale and are taken again, from the marks
            log.warning("recovering hub(s) %s: %s; will resume", hubs, exc)
        return again

    async def _claim(self, key: str, revision: int) -> _Claim | None:
        try:
            entry = await self.kv.get(key, revision=revision)
            record = unpack(entry.value or b"")
            hub, from_seq = str(record["hub"]), int(record["from_seq"])
            record = {**record, "claimed_by": self.hub_id}
            revision = await self.kv.update(key, pack(record), last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None  # renewed (alive after all), claimed by another hub, or gone
        except (PayloadError, AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("unreadable hub key %s: %s", key, exc)
            return None
        return _Claim(key, hub, revision, from_seq, record)

    async def _republish(self, claims: list[_Claim]) -> None:
        info = await self.nc.jetstream().stream_info(self.names.stream_history)
        end = info.state.last_seq
        seq = min(c.from_seq for c in claims)
        while claims and seq <= end:
            unlisted: dict[str, tuple[RunState, str | None]] = {}
            found, seq = await self._read(claims, seq, end, unlisted)
            for subject, (at, state) in found.items():
                await self._publish_if_open(subject, at, state)
            for subject, (state, continued_from) in unlisted.items():
                if self._list_run is not None:
                    await self._list_run(subject.split(".")[2], subject, state, continued_from)
                    self.listed += 1
            claims = [c for c in claims if await self._mark(c, seq)]
        for c in claims:
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await self.kv.delete(c.key, last=c.revision)

    async def _read(
        self,
        claims: list[_Claim],
        seq: int,
        end: int,
        unlisted: dict[str, tuple[RunState, str | None]],
    ) -> tuple[dict[str, tuple[int, RunState]], int]:
        """Up to ``CHUNK`` history messages from ``seq``: the runs whose newest
        push-intended transition among them, by a claimed hub (at or past its key's
        ``from_seq``), scheduled a workflow task (subject -> (sequence, state)); and the
        sequence to go on from. Starts a claimed hub left unlisted go to ``unlisted``."""
        since = {c.hub: c.from_seq for c in claims}
        found: dict[str, tuple[int, RunState]] = {}
        subjects = f"{self.names.prefix}.hist.>"
        stop = min(end, seq + CHUNK - 1)
        for _ in range(5):  # a replica behind the leader may end short of ``end``: again
            messages = read_subject(self.nc, self.names.stream_history, subjects, from_seq=seq)
            async with contextlib.aclosing(messages):
                async for msg in messages:
                    if msg.seq > stop:
                        break
                    seq = msg.seq + 1
                    hub = msg.headers.get(PUSH_HEADER)
                    if hub in since and msg.seq >= since[hub]:
                        state = decode(Transition, msg.data).state
                        if state.wft is not None:
                            found[msg.subject] = (msg.seq, state)
                    young = msg.headers.get(UNLISTED_HEADER)
                    if young in since and msg.seq >= since[young]:
                        unlisted[msg.subject] = _start_of(msg.data)
            if seq > stop:
                return found, seq
            await asyncio.sleep(0.2)
        # Never a partial answer: a mark would skip tasks unexamined. The claims go stale
        # instead, and another try reads on from the last mark.
        raise RuntimeError(f"history read ended at {seq - 1}, short of {stop}")

    async def _publish_if_open(self, subject: str, at: int, state: RunState) -> None:
        msg = await last_message(self.nc, self.names.stream_history, subject)
        if msg is not None and msg.seq >= at:  # a read at least as new as the transition
            newest = decode(Transition, msg.data).state
            if newest.wft != state.wft:
                return  # closed since
            state, at = newest, msg.seq
        tenant = subject.split(".")[2]
        await self._durable(tenant, workflow_task_emission(state, at))
        self.recovered += 1

    async def _mark(self, c: _Claim, seq: int) -> bool:
        """Move the claimed key's ``from_seq`` to ``seq`` (everything before is published);
        False if the key is no longer ours."""
        if seq <= c.from_seq:
            return True
        record = {**c.record, "from_seq": seq}
        try:
            c.revision = await self.kv.update(c.key, pack(record), last=c.revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False  # renewed by its hub (alive after all), or taken over
        c.from_seq, c.record = seq, record
        return True


def _start_of(data: bytes) -> tuple[RunState, str | None]:
    """A start's state and the run it continues (from its ``WorkflowStarted``)."""
    transition = decode(Transition, data)
    started = next((e for e in transition.events if e.type is EventType.WORKFLOW_STARTED), None)
    return transition.state, (started.attrs.get("continued_from") if started else None)
