"""After a chaos run: check every outcome, history, ledger row and queue.

An anomaly is anything a user would call a bug: a workflow lost (never finished), finished
twice or with a result its inputs do not imply; an activity effect recorded under two keys
(the same step done twice as different work) or missing; a history that is not contiguous
or whose integrity chain is broken; work left in a queue, or in the dead-letter subject.
Re-executions of one activity under one key are not anomalies: at-least-once delivery
under crashes is the contract, and the idempotency key is what makes it safe. They are
counted and reported. Nor is a queue message of a run that closed: its work was done,
and a worker taking it would be fenced. nats-server (2.12) occasionally keeps an acked
work-queue message across a restart; these are counted as ``leftover_done``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgpack

from immortal import Client, EventType
from immortal._jetstream import read_subject
from immortal._names import decode_token
from immortal._wire import CLOSING_EVENTS
from tests.chaos.driver import Drive
from tests.chaos.workload import POISON_ATTEMPTS, expected_result, expected_steps
from tests.helpers import assert_well_formed


@dataclass
class Report:
    fault: str
    seed: int
    workflows: int = 0
    completed: int = 0
    poison_failed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    attempts: int = 0  # activity attempts that reached activity code
    lost_attempts: int = 0  # WorkerLost attempt failures recorded in history
    reexecuted_effects: int = 0  # one key's effect attempted more than once (absorbed)
    client_retries: int = 0
    leftover_done: int = 0  # queue messages of finished work the server kept (see below)
    duplicates_sent: int = 0
    seconds: float = 0.0
    anomalies: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.anomalies.append(problem)


async def check(
    client: Client, drive: Drive, ledger: str, report: Report, *, settle: float = 60.0
) -> Report:
    report.workflows = len(drive.outcomes)
    report.client_retries = drive.client_retries
    report.duplicates_sent = drive.duplicates_sent
    report.seconds = round(drive.seconds, 1)
    _check_outcomes(drive, report)
    await _check_histories(client, drive, report)
    _check_ledger(drive, ledger, report)
    await _check_nothing_stranded(client, report, settle)
    return report


def _check_outcomes(drive: Drive, report: Report) -> None:
    for wid, out in drive.outcomes.items():
        if out.error:
            report.add(f"{wid}: lost: {out.error}")
        elif out.spec.get("poison"):
            cause = getattr(out.failure, "cause", None)
            if out.failure is None:
                report.add(f"{wid}: a poison workflow completed with {out.result!r}")
            elif "WorkerLost" not in repr(cause) and "attempts used" not in repr(cause):
                report.add(f"{wid}: poison failed for another reason: {cause!r}")
            else:
                report.poison_failed += 1
        elif out.failure is not None:
            report.add(f"{wid}: unexpected failure {out.failure!r}")
        elif out.result != expected_result(out.spec):
            report.add(f"{wid}: result {out.result!r}, expected {expected_result(out.spec)!r}")
        else:
            report.completed += 1


async def _check_histories(client: Client, drive: Drive, report: Report) -> None:
    runs = await _runs_by_workflow(client)
    gate = asyncio.Semaphore(16)

    async def one(wid: str) -> None:
        out = drive.outcomes[wid]
        if runs.get(wid, set()) != {out.run_id}:
            report.add(f"{wid}: runs in history {sorted(runs.get(wid, ()))}, started {out.run_id}")
        async with gate:
            await _check_run(client, wid, out.run_id, out.spec, report)
            if out.spec.get("child") and not out.error:
                child = f"{wid}-child-"
                children = [w for w in runs if w.startswith(child)]
                if len(children) != 1 or len(runs[children[0]]) != 1:
                    report.add(f"{wid}: child runs {[(c, runs[c]) for c in children]}")
                for cid in children:
                    for run in runs[cid]:
                        await _check_run(client, cid, run, {}, report)

    await asyncio.gather(*(one(w) for w in drive.outcomes))


async def _check_run(
    client: Client, wid: str, run_id: str, spec: dict[str, Any], report: Report
) -> None:
    if not run_id:
        return
    handle = await client.get_handle(wid, run_id)
    history = await handle.history()
    try:
        assert_well_formed(history)
    except AssertionError as exc:
        report.add(f"{wid}: malformed history: {exc}")
    types = Counter(e.type for e in history)
    if types[EventType.WORKFLOW_STARTED] != 1:
        report.add(f"{wid}: {types[EventType.WORKFLOW_STARTED]} WorkflowStarted events")
    if sum(types[t] for t in CLOSING_EVENTS) != 1:
        tail = ", ".join(f"{e.id} {e.type}" for e in history[-3:])
        report.add(f"{wid}: closed {sum(types[t] for t in CLOSING_EVENTS)} times; ends {tail}")
    if spec.get("signal") and types[EventType.WORKFLOW_SIGNALED] != 1:
        report.add(f"{wid}: {types[EventType.WORKFLOW_SIGNALED]} signals recorded, 1 sent")
    report.lost_attempts += sum(
        1
        for e in history
        if e.type in (EventType.ACTIVITY_ATTEMPT_FAILED, EventType.ACTIVITY_FAILED)
        and e.attrs.get("failure", {}).get("type") == "WorkerLost"
    )
    integrity = await handle.verify()
    if not integrity.ok:
        report.add(f"{wid}: integrity chain broken: {integrity.problems}")


async def _runs_by_workflow(client: Client) -> dict[str, set[str]]:
    info = await client.nc.jetstream().stream_info(
        client.names.stream_history,
        subjects_filter=f"{client.names.prefix}.hist.{client.tenant}.>",
    )
    runs: dict[str, set[str]] = defaultdict(set)
    for subject in info.state.subjects or {}:
        *_, wid, run = subject.split(".")
        runs[decode_token(wid)].add(run)
    return runs


def _check_ledger(drive: Drive, ledger: str, report: Report) -> None:
    db = sqlite3.connect(ledger)
    try:
        effects: dict[tuple[str, str], list[tuple[str, int, int]]] = defaultdict(list)
        for key, owner, step, value, applies in db.execute("SELECT * FROM effects"):
            effects[(owner, step)].append((key, value, applies))
        attempts = Counter(
            owner for (owner,) in db.execute("SELECT owner FROM attempts WHERE step = 'poison'")
        )
        report.attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
    finally:
        db.close()
    report.reexecuted_effects = sum(
        1 for rows in effects.values() for _, _, applies in rows if applies > 1
    )
    wanted: set[tuple[str, str]] = set()
    for wid, out in drive.outcomes.items():
        if out.spec.get("poison"):
            # Each attempt crashes its worker once, or is lost before it runs (its worker was
            # crashed by another poison attempt first); never more.
            if not 1 <= attempts[wid] <= POISON_ATTEMPTS:
                report.add(f"{wid}: poison ran {attempts[wid]} times, max {POISON_ATTEMPTS}")
            continue
        for step, value in expected_steps(out.spec).items():
            wanted.add((wid, step))
            rows = effects.get((wid, step), [])
            if len(rows) != 1:
                report.add(f"{wid}: step {step} has {len(rows)} effects in the ledger: {rows}")
            elif rows[0][1] != value:
                report.add(f"{wid}: step {step} recorded {rows[0][1]}, expected {value}")
    for extra in set(effects) - wanted:
        report.add(f"ledger holds an effect no workflow asked for: {extra}")


async def _check_nothing_stranded(client: Client, report: Report, settle: float) -> None:
    """Work queues drain once every run closed; dead letters must be none."""
    js = client.nc.jetstream()
    names = client.names
    deadline = time.monotonic() + settle
    left: dict[str, int] = {}
    while time.monotonic() < deadline:
        left = {}
        for stream in (names.stream_in, names.stream_tasks):
            n = (await js.stream_info(stream)).state.messages
            if n:
                left[stream] = n
        if not left:
            break
        await asyncio.sleep(0.5)
    for stream in left:
        live = []
        async for msg in read_subject(client.nc, stream, f"{names.prefix}.>"):
            body = msgpack.unpackb(msg.data)
            handle = await client.get_handle(body["workflow_id"], body["run_id"])
            if (await handle.describe()).status.closed:
                # Its run closed, so its work was done (and a worker taking it would be
                # fenced); the server kept an acked message across a restart.
                report.leftover_done += 1
            else:
                live.append(f"{msg.subject} of {body['workflow_id']}")
        if live:
            report.add(f"{len(live)} message(s) of open runs stranded in {stream}: {live}")
    for letter in await client.dead_letters.list():
        report.add(f"dead letter {letter.kind} on {letter.queue}: {letter.error}")
