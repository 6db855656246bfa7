"""A tenant's burst, in a process of its own: ``python -m bench._burst URL TENANT N``.

Starts N one-activity workflows at once as TENANT (printing ``go`` as they leave), prints
``submitted <seconds>`` when
every start has been accepted (applied by a hub, or queued durably in ``IMM_IN``), then
waits for them all and prints one JSON line: how many completed, and when.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench._harness import Completions, pct
from immortal import Client


async def burst(url: str, tenant: str, n: int) -> None:
    async with Client(url, tenant=tenant) as client, Completions(client.nc, tenant=tenant) as done:
        print("go", flush=True)  # the starts leave now
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(client.start("one_activity", i) for i in range(n)))
        print(f"submitted {time.perf_counter() - t0:.3f}", flush=True)
        ends = await asyncio.gather(*(done.wait(h.run_id) for h in handles))
        took = [(end - t0) * 1000 for end in ends]
        print(
            json.dumps(
                {
                    "completed": len(ends),
                    "all_done_s": (max(ends) - t0),
                    "p50_ms": pct(took, 50),
                    "p99_ms": pct(took, 99),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(burst(sys.argv[1], sys.argv[2], int(sys.argv[3])))
