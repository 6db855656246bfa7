"""What signing costs a whole 1-activity workflow, in one process (``-w signing_stack``).

Two auth-on stacks side by side, each a nats-server with the auth service, and a hub, a
worker and a client in this process: one with every input signed (sessions, as a signer
does by default), one without. Their workflows run one at a time, alternated in blocks,
so both see the same machine. Per workflow: the process's CPU (hub, worker and client
together, all on one loop, so every step of the signed path counts) and the start-to-
result time. The difference is signing's cost on the CPU and on the unloaded latency,
without the scheduling noise of the multi-process passes (``--secure --signing``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench._harness import Metric
from bench._secure import Secure, secure_server
from bench.workflows import noop, one_activity
from immortal import Client
from immortal.security import ConnectSecurity
from immortal.security.signing import Signer
from immortal_hub import Hub
from immortal_worker import Worker

BLOCKS, PER_BLOCK, WARM = 5, 20, 10


async def measure(metric: Callable[[str, str, str], Metric]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="immortal-signing-") as tmp:
        async with AsyncExitStack() as stack:
            clients = {}
            for name, signing in (("unsigned", False), ("signed", True)):
                secure = await stack.enter_async_context(
                    secure_server(Path(tmp) / name, signing=signing)
                )
                clients[name] = await _in_process(secure, stack)
            cpu: dict[str, list[float]] = {n: [] for n in clients}
            took: dict[str, list[float]] = {n: [] for n in clients}
            for client in clients.values():
                for i in range(WARM):  # sessions open, caches fill
                    await (await client.start(one_activity, i)).result(timeout=30)
            for _ in range(BLOCKS):
                for name, client in clients.items():
                    for i in range(PER_BLOCK):
                        t0, c0 = time.perf_counter(), time.process_time()
                        await (await client.start(one_activity, i)).result(timeout=30)
                        took[name].append((time.perf_counter() - t0) * 1000)
                        cpu[name].append((time.process_time() - c0) * 1000)
    out: dict[str, Any] = {}
    for name in clients:
        out[f"{name}_cpu_ms"] = statistics.median(cpu[name])
        out[f"{name}_p50_ms"] = statistics.median(took[name])
        metric(f"signing, in one process: CPU per workflow, {name}", "ms", "").values.append(
            out[f"{name}_cpu_ms"]
        )
        metric(f"signing, in one process: p50, {name}", "ms", "").values.append(
            out[f"{name}_p50_ms"]
        )
    out["cpu_added_ms"] = out["signed_cpu_ms"] - out["unsigned_cpu_ms"]
    out["p50_added_ms"] = out["signed_p50_ms"] - out["unsigned_p50_ms"]
    metric("signing, in one process: CPU added per workflow", "ms", "").values.append(
        out["cpu_added_ms"]
    )
    metric("signing, in one process: p50 added", "ms", "").values.append(out["p50_added_ms"])
    return out


async def _in_process(secure: Secure, stack: AsyncExitStack) -> Client:
    """A hub, a worker and a client of ``secure``'s tenant, in this process (stopped when
    ``stack`` closes)."""
    url, env = secure.server.url, secure.env
    hub = Hub(url, security=ConnectSecurity.with_token(env["hub"]["IMMORTAL_TOKEN"]))
    await hub.start()
    stack.push_async_callback(hub.stop)
    worker_env = env["worker"]
    worker = Worker(
        url,
        workflows=[one_activity],
        activities=[noop],
        security=ConnectSecurity.with_token(
            worker_env["IMMORTAL_TOKEN"], signer=Signer.from_env(worker_env)
        ),
    )
    await worker.start()
    stack.push_async_callback(worker.stop)
    return await stack.enter_async_context(Client(url, security=secure.client))


def report(shape: dict[str, Any]) -> str:
    return (
        f"one process, unsigned / signed: CPU {shape['unsigned_cpu_ms']:.2f} / "
        f"{shape['signed_cpu_ms']:.2f} ms per workflow ({shape['cpu_added_ms']:+.2f}), "
        f"p50 {shape['unsigned_p50_ms']:.2f} / {shape['signed_p50_ms']:.2f} ms "
        f"({shape['p50_added_ms']:+.2f})"
    )
