"""``-w list``: the first page of ``list_workflows`` in a tenant with 100,000 runs.

The tenant holds ``--list-n`` runs (default 100,000): ``--list-real`` of them (default
2,000: half still open, waiting for a signal, half closed) go through a hub and a worker
as any run does; the rest are closed runs whose index records this bench writes itself,
straight into ``IMM_RUNS`` in the format the hub writes (``immortal.runs.closed_record``),
because making 98,000 runs the real way takes minutes. Their close times span the past
week, in order, so that a ``--since 1h`` listing meets what it would in a week-old tenant.
Ten of the open runs are of a type no other run has and are the oldest open ones: a
filter that matches few runs far back.

Each query is timed as a client sees it (``await client.list_workflows(...)``), after one
untimed warm-up call, ``--list-reps`` times per trial.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._harness import start_hub, start_worker
from immortal import Client
from immortal._names import Names
from immortal._wire import RunState, RunStatus
from immortal.runs import closed_record

if TYPE_CHECKING:
    from bench.__main__ import Bench

TYPES = ["place_order", "refund", "ship", "invoice", "notify"]
QUEUES = ["default", "eu", "batch"]
# Of the closed runs written directly: how they ended.
ENDINGS = [RunStatus.COMPLETED] * 80 + [RunStatus.FAILED] * 15 + [RunStatus.CANCELLED] * 4
ENDINGS += [RunStatus.CONTINUED_AS_NEW]
_WEEK_MS = 7 * 86_400_000


async def run_list(bench: Bench) -> None:
    args = bench.args
    real = min(args.list_real, args.list_n)
    hubs = [await start_hub(bench.url, 0)]
    workers = [await start_worker(bench.url, 0, tenant="lists")]
    try:
        async with Client(bench.url, tenant="lists") as client:
            t0 = time.perf_counter()
            await _fill_direct(client, args.list_n - real)
            await _fill_real(client, real)
            filled = time.perf_counter() - t0
            print(f"  list: {args.list_n:,} runs in the index after {filled:.0f} s", flush=True)
            # The real runs' closes each left an empty message on their open record's subject
            # (expiring after 1 s): measure once they are gone, as a steady tenant is.
            await asyncio.sleep(3)
            bench.extra["list: runs in the tenant"] = args.list_n
            for _ in range(args.trials):
                await _measure(bench, client, args.list_reps)
                await asyncio.to_thread(_whole_process, bench)
    finally:
        await bench._stop([*workers, *hubs])


def _queries() -> dict[str, dict[str, Any]]:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    return {
        "no filter": {},
        "--status running": {"status": "running"},
        "--status completed": {"status": "completed"},
        "--status failed --type refund": {"status": "failed", "type": "refund"},
        "--type ship --queue eu": {"type": "ship", "queue": "eu"},
        "--status cancelled --queue batch": {"status": "cancelled", "queue": "batch"},
        "--since 1h": {"started_after": hour_ago},
        "--status running --type rare (10 oldest open)": {"status": "running", "type": "rare"},
        "--status continued_as_new --type notify (1%)": {
            "status": "continued_as_new",
            "type": "notify",
        },
    }


async def _measure(bench: Bench, client: Client, reps: int) -> None:
    for label, query in _queries().items():
        m = bench.metric(f"list first page (50), {label}", "ms", target="< 100")
        await client.list_workflows(**query)  # warm: bucket handles, server caches
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            page = await client.list_workflows(**query)
            times.append((time.perf_counter() - t0) * 1000)
        m.values.append(sorted(times)[len(times) // 2])
        bench.extra.setdefault(f"list: {label}: runs on the first page", len(page.runs))
    first = await client.list_workflows()
    m = bench.metric("list second page (50), no filter", "ms", target="< 100")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await client.list_workflows(page_token=first.next_page_token)
        times.append((time.perf_counter() - t0) * 1000)
    m.values.append(sorted(times)[len(times) // 2])


def _whole_process(bench: Bench, runs: int = 5) -> None:
    """``immortal workflow list`` as a shell runs it, exec to exit (Python's start and the
    CLI's imports included; bytecode cached in a temporary directory)."""
    immortal = Path(sys.executable).parent / "immortal"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(bench.tmp / "pycache")
    for label, extra in (("", []), (" --status running", ["--status", "running"])):
        command = [str(immortal), "workflow", "list", *extra, "-s", bench.url, "--tenant", "lists"]
        subprocess.run(command, env=env, capture_output=True, check=True)  # warm the cache
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=True)
            times.append((time.perf_counter() - t0) * 1000)
        name = f"immortal workflow list{label}: whole process (Python start included)"
        bench.metric(name, "ms").values.append(sorted(times)[len(times) // 2])


async def _fill_direct(client: Client, n: int) -> None:
    """``n`` closed runs' records, as the hub writes them, closed over the past week."""
    names: Names = client.names
    js = client.nc.jetstream()
    now = int(time.time() * 1000) - 2 * 3_600_000  # the newest two hours before the real runs
    pending: list[Any] = []
    for i in range(n):
        closed = now - _WEEK_MS + i * _WEEK_MS // max(n, 1)
        state = RunState(
            workflow_id=f"direct-{i}",
            run_id=uuid.uuid4().hex,
            workflow_type=TYPES[i % len(TYPES)],
            queue=QUEUES[(i // len(TYPES)) % len(QUEUES)],
            status=ENDINGS[i % len(ENDINGS)],
            started_ts=closed - 1_500,
            closed_ts=closed,
        )
        subject = names.run_closed_subject(
            client.tenant, str(state.status), state.queue, state.workflow_type
        )
        pending.append(await js.publish_async(subject, closed_record(state, i + 1, b"\0" * 32)))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def _fill_real(client: Client, n: int) -> None:
    """``n`` runs through a hub and a worker: half closed, half open (waiting), ten of
    those of the type ``rare`` and started first."""
    gate = asyncio.Semaphore(500)

    async def one(workflow: str, i: int) -> Any:
        async with gate:
            return await client.start(workflow, i)

    rare = [await client.start("rare", i) for i in range(10)]
    opened = await asyncio.gather(*(one("waits", i) for i in range(n // 2 - 10)))
    closed = await asyncio.gather(*(one("one_activity", i) for i in range(n - n // 2)))
    for handle in closed:
        await handle.result(timeout=300)
    assert len(rare) + len(opened) == n // 2
