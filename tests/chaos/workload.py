"""The chaos suite's workload, served by worker processes: ``python -m immortal_worker
tests.chaos.workload``.

Every activity writes to an external ledger (SQLite, ``$IMMORTAL_CHAOS_LEDGER``), keyed by
its idempotency key, the way a payment API dedupes charges: ``effects`` holds one row per
key (``applies`` counts how often the effect was attempted, which faults may raise above 1),
``attempts`` one row per attempt that reached the activity code. The checker reads it after
the run; it is outside NATS, so no fault here can rewrite it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

import immortal
from immortal import RetryPolicy, WorkflowContext
from immortal._activity import ActivityInfo

# Retries forever, quickly: under chaos an attempt may be lost many times over.
FLAKY = RetryPolicy(initial_interval=0.05, maximum_interval=0.5, maximum_attempts=0)
POISON_ATTEMPTS = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, step TEXT NOT NULL, value INTEGER NOT NULL,
    applies INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL, owner TEXT NOT NULL, step TEXT NOT NULL, attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL, ts REAL NOT NULL
);
"""


def connect_ledger(path: str | None = None) -> sqlite3.Connection:
    db = sqlite3.connect(path or os.environ["IMMORTAL_CHAOS_LEDGER"], timeout=60)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def _record_attempt(db: sqlite3.Connection, owner: str, step: str) -> ActivityInfo:
    info = immortal.activity.info()
    with db:
        db.execute(
            "INSERT INTO attempts VALUES (?, ?, ?, ?, ?, ?)",
            (info.idempotency_key, owner, step, info.attempt, os.getpid(), time.time()),
        )
    return info


def step_value(step: str, value: int) -> int:
    return value * 3 + len(step)


@immortal.activity(retry=FLAKY)
def effect(owner: str, step: str, value: int, fail_first: int) -> int:
    """Fails its first ``fail_first`` attempts, then applies its effect once per key."""
    db = connect_ledger()
    try:
        info = _record_attempt(db, owner, step)
        if info.attempt <= fail_first:
            raise RuntimeError(f"{step} of {owner}: attempt {info.attempt} fails on purpose")
        with db:
            db.execute(
                "INSERT INTO effects VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT(key) DO UPDATE SET applies = applies + 1",
                (info.idempotency_key, owner, step, value),
            )
    finally:
        db.close()
    return step_value(step, value)


@immortal.activity(retry=RetryPolicy(maximum_attempts=POISON_ATTEMPTS, initial_interval=0.1))
def poison(owner: str) -> int:
    """Crashes the worker process running it, every time."""
    db = connect_ledger()
    _record_attempt(db, owner, "poison")
    db.close()
    os._exit(13)


@immortal.workflow
async def child_flow(ctx: WorkflowContext, owner: str, x: int) -> int:
    return await ctx.activity(effect, owner, "c", 2 * x, 1 if x % 3 == 0 else 0)


@immortal.workflow
async def mixed(ctx: WorkflowContext, spec: dict[str, Any]) -> int:
    """An activity that may fail and retry, a durable sleep, a signal, a child, an activity."""
    owner, x = spec["id"], spec["x"]
    total = await ctx.activity(effect, owner, "a", x, spec["fail"])
    if spec["sleep"]:
        await ctx.sleep(spec["sleep"])
    if spec["signal"]:
        total += int(await ctx.wait_signal("bump"))
    if spec["child"]:
        total += await ctx.child(child_flow, owner, x)
    total += await ctx.activity(effect, owner, "b", x + 1, 0)
    return total


@immortal.workflow
async def poisoned(ctx: WorkflowContext, owner: str) -> int:
    return await ctx.activity(poison, owner)


def expected_result(spec: dict[str, Any]) -> int:
    """What ``mixed`` returns for ``spec``, computed without running it."""
    x = spec["x"]
    total = step_value("a", x) + step_value("b", x + 1)
    if spec["signal"]:
        total += spec["bump"]
    if spec["child"]:
        total += step_value("c", 2 * x)
    return total


def expected_steps(spec: dict[str, Any]) -> dict[str, int]:
    """The effects ``mixed`` leaves in the ledger: step -> value."""
    x = spec["x"]
    steps = {"a": x, "b": x + 1}
    if spec["child"]:
        steps["c"] = 2 * x
    return steps


workflows = [mixed, child_flow, poisoned]
activities = [effect, poison]
