"""Workloads about the fleet under faults and load: a frozen worker, one tenant's burst.

``-w frozen_worker``: a worker SIGSTOPped 0.5 s into an activity, with the default 30 s
lease; how long until the activity starts again on another worker (a dead one's figure is
``-w dead_worker``). ``-w fairness``: tenant B's single workflows, one at a time, alone and
while tenant A starts ``--burst-n`` (1,500) at once. ``-w fairness_batch`` is the earlier
figure: a batch of ``--fair-n`` of B's workflows at once, alone and during A's burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._harness import ROOT, Completions, pct, start_hub, start_worker
from immortal import Client

if TYPE_CHECKING:
    from bench.__main__ import Bench

__all__ = ["fairness", "fairness_batch", "frozen_worker", "wait_marks"]


async def wait_marks(d: Path, n: int, tag: str, timeout: float = 30) -> list[Path]:
    """Poll for the marker files that this trial's activity writes in other processes."""
    async with asyncio.timeout(timeout):
        while True:
            found = sorted(d.glob(f"{tag}.*"), key=lambda p: p.stat().st_mtime)  # noqa: ASYNC240
            if len(found) >= n:
                return found
            await asyncio.sleep(0.01)


async def frozen_worker(bench: Bench) -> None:
    m = bench.metric(
        "frozen worker (SIGSTOP 0.5 s into the activity): restarted elsewhere after",
        "s",
        target="< 3",
    )
    lease = bench.args.lease
    bench.extra["frozen worker lease (s)"] = lease
    for trial in range(bench.args.dead_trials):
        marks = bench.tmp / f"frozen-{trial}"
        marks.mkdir()
        hubs, workers = await bench._cluster(
            workers=2, lease=lease, env={"IMMORTAL_BENCH_DIR": str(marks)}
        )
        victim = None
        try:
            async with Client(bench.url) as client:
                tag = f"f{trial}"
                await client.start("held", tag)  # marks files "f<trial>.<pid>"
                first = await wait_marks(marks, 1, tag)
                victim = next(w for w in workers if w.pid == int(first[0].suffix[1:]))
                await asyncio.sleep(0.5)
                victim.proc.send_signal(signal.SIGSTOP)
                stopped = time.time()
                second = await wait_marks(marks, 2, tag, timeout=lease * 3 + 30)
                m.values.append(float(second[-1].read_text()) - stopped)
        finally:
            if victim is not None:
                victim.proc.send_signal(signal.SIGCONT)
            await bench._stop([*workers, *hubs])


async def _one_at_a_time(
    client: Client, done: Completions, until: asyncio.Event, n: int, pace: float
) -> list[float]:
    """``n`` one-activity workflows, one at a time, one every ``pace`` seconds (or as soon
    as the one before closed, if later), or fewer if ``until`` is set first; each one's
    start-to-close time, in ms. Paced, they spread over A's burst instead of finishing at
    its start."""
    took = []
    loop = asyncio.get_running_loop()
    for i in range(n):
        if until.is_set():
            break
        t0 = time.perf_counter()
        began = loop.time()
        handle = await client.start("one_activity", i)
        took.append((await asyncio.wait_for(done.wait(handle.run_id), 300) - t0) * 1000)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, began + pace - loop.time())):
                await until.wait()
    return took


async def _batch(client: Client, done: Completions, n: int) -> list[float]:
    """Start ``n`` one-activity workflows at once; each one's start-to-close time, in ms."""

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        handle = await client.start("one_activity", i)
        return (await asyncio.wait_for(done.wait(handle.run_id), 300) - t0) * 1000

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def _with_burst(bench: Bench, during: Any) -> None:
    """Per trial: fresh hubs and a worker per tenant; ``during(b, done, phase)`` measures B
    alone (phase ``idle``), then while A's burst runs (phase ``burst``, after which it gets
    the burst's report)."""
    a_n = bench.args.burst_n
    for _ in range(bench.args.trials):
        hubs = [await start_hub(bench.url, i, *bench.hub_options) for i in range(bench.args.hubs)]
        workers = [
            await start_worker(bench.url, 0, tenant="a"),
            await start_worker(bench.url, 1, tenant="b"),
        ]
        burst = None
        try:
            async with (
                Client(bench.url, tenant="a") as a,
                Client(bench.url, tenant="b") as b,
                Completions(b.nc, tenant="b") as done,
            ):
                for client in (a, b):  # queues registered, consumers created, caches warm
                    await (await client.start("one_activity", 0)).result(timeout=30)
                await during(b, done, "idle", None)
                burst = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench._burst", bench.url, "a", str(a_n),
                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert burst.stdout is not None
                assert (await burst.stdout.readline()).strip() == b"go"
                measuring = asyncio.ensure_future(during(b, done, "burst", None))
                submitted = (await burst.stdout.readline()).decode().split()
                assert submitted and submitted[0] == "submitted", submitted
                async with asyncio.timeout(bench.args.timeout):
                    report = json.loads(await burst.stdout.readline())
                report["submitted_s"] = float(submitted[1])
                await during(b, done, "report", (measuring, report))
        finally:
            if burst is not None and burst.returncode is None:
                burst.kill()
                await burst.wait()
            await bench._stop([*workers, *hubs])
        assert report["completed"] == a_n, report


async def fairness(bench: Bench) -> None:
    """Tenant B runs ``--fair-singles`` one-activity workflows one at a time (one every
    ``--fair-pace`` seconds), alone, then while tenant A's ``--burst-n`` start at once: B's
    latency as a single workflow sees it. Only B's runs begun before A's burst ended count."""
    a_n, b_n, pace = bench.args.burst_n, bench.args.fair_singles, bench.args.fair_pace
    m = {
        key: bench.metric(f"fairness: {key}", unit, target=target)
        for key, unit, target in [
            ("B single p50, A idle", "ms", ""),
            ("B singles during A's burst", "runs", ""),
            ("B single p50, A bursting", "ms", ""),
            ("B single p50 ratio, bursting / idle", "x", "<= 3"),
            ("B slowest single, share of A's burst", "%", "<= 10"),
            (f"A's {a_n:,} workflows all completed in", "s", ""),
        ]
    }
    stop = asyncio.Event()
    idle: list[float] = []

    async def during(b: Client, done: Completions, phase: str, got: Any) -> list[float]:
        nonlocal idle
        if phase == "idle":
            stop.clear()
            idle = await _one_at_a_time(b, done, stop, b_n, pace)
            return idle
        if phase == "burst":
            return await _one_at_a_time(b, done, stop, b_n, pace)
        measuring, report = got
        stop.set()  # B's runs that begin after A's burst ended do not count
        busy = await measuring
        figures = {
            "B single p50, A idle": pct(idle, 50),
            "B single p50, A bursting": pct(busy, 50),
            "B singles during A's burst": len(busy),
            "B single p50 ratio, bursting / idle": pct(busy, 50) / pct(idle, 50),
            "B slowest single, share of A's burst": 100 * max(busy) / (1000 * report["all_done_s"]),
            f"A's {a_n:,} workflows all completed in": report["all_done_s"],
        }
        for key, value in figures.items():
            m[key].values.append(value)
        print(
            f"  fairness: B single p50 {figures['B single p50, A idle']:.1f} ms alone, "
            f"{figures['B single p50, A bursting']:.1f} ms during A's burst ({len(busy)} runs, "
            f"slowest {max(busy):.0f} ms); A done in {report['all_done_s']:.2f} s",
            flush=True,
        )
        return busy

    await _with_burst(bench, during)


async def fairness_batch(bench: Bench) -> None:
    """The earlier figure: a batch of ``--fair-n`` of B's workflows at once, alone and right
    after A's ``--burst-n`` starts are in."""
    a_n, b_n = bench.args.burst_n, bench.args.fair_n
    m = {
        key: bench.metric(f"fairness (batch of {b_n}): {key}", unit)
        for key, unit in [
            ("B p50, A idle", "ms"),
            ("B p50, A bursting", "ms"),
            ("B p50 ratio, bursting / idle", "x"),
            ("B p99 ratio, bursting / idle", "x"),
            (f"A's {a_n:,} workflows all completed in", "s"),
        ]
    }
    idle: list[float] = []

    async def during(b: Client, done: Completions, phase: str, got: Any) -> list[float]:
        nonlocal idle
        if phase == "idle":
            idle = await _batch(b, done, b_n)
            return idle
        if phase == "burst":
            return await _batch(b, done, b_n)
        measuring, report = got
        busy = await measuring
        figures = {
            "B p50, A idle": pct(idle, 50),
            "B p50, A bursting": pct(busy, 50),
            "B p50 ratio, bursting / idle": pct(busy, 50) / pct(idle, 50),
            "B p99 ratio, bursting / idle": pct(busy, 99) / pct(idle, 99),
            f"A's {a_n:,} workflows all completed in": report["all_done_s"],
        }
        for key, value in figures.items():
            m[key].values.append(value)
        return busy

    await _with_burst(bench, during)
