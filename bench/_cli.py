"""The CLI as a user meets it: the whole-process wall time of read commands against a local
server (``python -m bench -w cli``).

Each command runs as its own process, from exec to exit, as a shell would run it. Python's
bytecode cache matters more than anything else here: an installed package has one (pip
writes it at install, Python on first import), while ``PYTHONDONTWRITEBYTECODE=1`` makes
every run compile every imported module from source again. Both are measured; the cache
goes to a temporary ``PYTHONPYCACHEPREFIX``, so nothing is written beside the sources.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench._harness import start_hub
from immortal import Client

if TYPE_CHECKING:
    from bench.__main__ import Bench

RUNS = 10  # per trial and command


async def cli(bench: Bench) -> None:
    """``immortal workflow describe ID``, the bare interpreter and the CLI's import."""
    hub = await start_hub(bench.url, 0)
    try:
        async with Client(bench.url) as client:
            handle = await client.start("one_activity", 0, id="bench-cli")  # no worker: open
            async with asyncio.timeout(10):
                while True:  # until the hub applied the start
                    try:
                        await handle.describe()
                        break
                    except Exception:
                        await asyncio.sleep(0.05)
        await asyncio.to_thread(_measure, bench, handle.workflow_id)
    finally:
        await hub.stop()


def _measure(bench: Bench, workflow_id: str) -> None:
    immortal = Path(sys.executable).parent / "immortal"
    describe = [str(immortal), "workflow", "describe", workflow_id, "-s", bench.url]
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import immortal_hub.cli": [sys.executable, "-c", "import immortal_hub.cli"],
        "immortal workflow describe": describe,
    }
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    caches = {
        "bytecode cached": {**base, "PYTHONPYCACHEPREFIX": str(bench.tmp / "pycache")},
        "no bytecode cache": {**base, "PYTHONDONTWRITEBYTECODE": "1"},
    }
    for cache, env in caches.items():
        for label, argv in commands.items():
            subprocess.run(argv, env=env, capture_output=True, check=True)  # warm: cache, disk
            wall = bench.metric(
                f"cli: {label}, {cache}", "ms", "< 500" if "describe" in label else ""
            )
            # CPU time tells the cost apart from waiting for a busy machine's cores.
            cpu = bench.metric(f"cli: {label}, {cache}, CPU", "ms")
            for _ in range(bench.args.trials * RUNS):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, capture_output=True, check=True)
                wall.values.append((time.perf_counter() - t0) * 1000)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                cpu.values.append(used * 1000)
            print(
                f"  cli: {label}, {cache}: median {statistics.median(wall.values):.0f} ms "
                f"(CPU {statistics.median(cpu.values):.0f} ms)",
                flush=True,
            )
