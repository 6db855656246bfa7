"""Processes and measurements the workloads share."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client as NATS

from immortal.testing import Process

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Proc(Process):
    """A benchmark process, with what it cost."""

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def spawn(name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while b"ready" not in (line := await proc.stdout.readline()):
            if not line:
                raise RuntimeError(f"{name} exited before it was ready")
    return Proc(proc, name)


async def start_hub(url: str, i: int, *options: str, env: dict[str, str] | None = None) -> Proc:
    args = ["-m", "immortal_hub", "hub", "-s", url, "--log-level", "WARNING", "--monitor", "off"]
    return await spawn(f"hub{i}", [*args, *options], env)


async def start_worker(
    url: str,
    i: int,
    *,
    lease: float = 30.0,
    tenant: str = "default",
    env: dict[str, str] | None = None,
) -> Proc:
    args = ["-m", "immortal_worker", "bench.workflows", "-s", url, "--id", f"bench-w{i}"]
    args += ["--tenant", tenant, "--lease", str(lease), "--log-level", "WARNING"]
    return await spawn(f"worker{i}", args, env)


class Completions:
    """One wildcard subscription on history: when did each run close?"""

    def __init__(self, nc: NATS, prefix: str = "imm", tenant: str | None = None) -> None:
        self.nc = nc
        self.subject = f"{prefix}.hist.{tenant}.>" if tenant else f"{prefix}.hist.>"
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.done: dict[str, float] = {}

    async def __aenter__(self) -> Completions:
        self.sub = await self.nc.subscribe(self.subject, cb=self._on_msg)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        state = msgpack.unpackb(msg.data, strict_map_key=False)["state"]
        if state.get("status", "running") != "running":
            now = time.perf_counter()
            run = state["run_id"]
            self.done[run] = now
            fut = self.waiters.pop(run, None)
            if fut is not None and not fut.done():
                fut.set_result(now)

    def wait(self, run_id: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if run_id in self.done:
            fut.set_result(self.done[run_id])
        else:
            self.waiters[run_id] = fut
        return fut


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Metric:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""

    def row(self) -> list[str]:
        if not self.values:
            return [self.name, "n/a", "", "", self.unit, self.target]
        return [
            self.name,
            _fmt(statistics.median(self.values)),
            _fmt(min(self.values)),
            _fmt(max(self.values)),
            self.unit,
            self.target,
        ]


Cost = tuple[str, str, float, str]  # (name, unit, value, target) of a derived figure


def median_of(metrics: dict[str, Any], name: str) -> float | None:
    """The median of metric ``name``'s values; None if it was not measured."""
    m = metrics.get(name)
    return float(statistics.median(m.values)) if m is not None and m.values else None


def cost(
    metrics: dict[str, Any], on: str, off: str, kept: str, added: str | None, target: bool = True
) -> list[Cost]:
    """What the pass whose metrics end in ``on`` costs beside the one ending in ``off``: the
    share of 1-activity throughput kept (named ``kept``) and the unloaded p50 added
    (``added``, unless None); with ``target``, against the targets of >= 85 % and <= 1 ms."""
    out: list[Cost] = []
    a, b = (
        median_of(metrics, "1 activity: completed" + off),
        median_of(metrics, "1 activity: completed" + on),
    )
    if a and b:
        out.append((kept, "%", 100 * b / a, ">= 85" if target else ""))
    a, b = (
        median_of(metrics, "unloaded latency p50" + off),
        median_of(metrics, "unloaded latency p50" + on),
    )
    if added is not None and a is not None and b is not None:
        out.append((added, "ms", b - a, "<= 1" if target else ""))
    return out


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(metrics: list[Metric]) -> str:
    rows = [["metric", "median", "min", "max", "unit", "target"], *[m.row() for m in metrics]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i in (0, 4, 5) else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
