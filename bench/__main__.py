"""``python -m bench``: Immortal against the physical limit of JetStream on this machine.

Starts its own nats-server (JetStream, ``sync_interval: always``), hubs and workers as
separate processes, runs each workload for several trials, prints a table (median, min,
max) and writes the figures to ``bench/results/<time>.json``.

    python -m bench                         # everything, 1 hub x 1 worker
    python -m bench --hubs 2 --workers 2    # scale-out
    python -m bench -w throughput -n 5000   # one workload
    python -m bench -w fairness             # tenant B's latency while tenant A bursts
    python -m bench -w cli                  # `immortal workflow describe` as a process
    python -m bench -w policy               # policy decision cost (no broker involved)
    python -m bench -w throughput -w latency --secure   # and again with auth on (_secure)
    python -m bench -w throughput -w latency --encrypt  # and again with payloads encrypted
    # both: the auth pass signs (--signing) and encrypts too, beside auth alone and plain
    python -m bench -w throughput --secure --policy     # and with a tenant policy on top
    python -m bench -w throughput --secure --signing    # ... with auth and signed inputs on
    python -m bench -w signing              # sign/verify cost per input (no broker involved)
    python -m bench -w signing_stack        # signing's cost per workflow, in one process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.js.api import StorageType, StreamConfig

from bench import _encrypt, _policy, _signing, _signing_stack
from bench._cli import cli
from bench._fleet import fairness, fairness_batch, frozen_worker, wait_marks
from bench._harness import (
    Completions,
    Metric,
    Proc,
    cpu_seconds,
    pct,
    peak_rss_mb,
    rss_mb,
    start_hub,
    start_worker,
    table,
)
from bench._list import run_list
from bench._secure import BENCH_POLICY, POLICY_SUFFIX, Secure, compare, secure_server
from immortal import Client
from immortal.testing import NatsServer

WORKLOADS = [
    "jetstream", "throughput", "sequential5", "fanout10", "latency", "timers", "dead_worker",
    "frozen_worker", "fairness", "cli", "policy", "signing",
]  # fmt: skip
OPTIONAL = [
    "soak",
    "fairness_batch",
    "list",
    "signing_stack",
]  # run with -w (list fills a tenant first)
STREAMS = ["IMM_IN", "IMM_HISTORY", "IMM_TASKS", "IMM_RUNS"]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.metrics: dict[str, Metric] = {}
        self.extra: dict[str, Any] = {}
        self.secure: Secure | None = None  # the second pass of --secure
        self.suffix = ""
        self.codec: Any = None  # with --encrypt, in its pass: the client's payload codec
        self.codec_env: dict[str, str] = {}  # ...and the workers' key ring
        self.hub_options = [o for spec in args.tenant_limit or [] for o in ("--tenant-limit", spec)]
        if args.hub_max_in_flight:
            self.hub_options += ["--max-in-flight", str(args.hub_max_in_flight)]
        if args.hub_concurrency:
            self.hub_options += ["--concurrency", str(args.hub_concurrency)]
        if args.hub_max_writes:
            self.hub_options += ["--max-writes", str(args.hub_max_writes)]

    def metric(self, name: str, unit: str, target: str = "") -> Metric:
        name += self.suffix
        return self.metrics.setdefault(name, Metric(name, unit, target=target))

    def client(self) -> Client:
        security = self.secure.client if self.secure else None
        return Client(self.url, security=security, codec=self.codec)

    def completions(self, client: Client) -> Completions:
        # With auth on the client may subscribe to its own tenant's history only.
        return Completions(client.nc, tenant=client.tenant if self.secure else None)

    def env(self, role: str) -> dict[str, str]:
        env = self.secure.env[role] if self.secure else {}
        return {**env, **self.codec_env} if role == "worker" else env  # never the hub's

    async def run(self) -> None:
        secure_suffix = ""
        for _ in range(self.args.rounds):  # the passes side by side, round after round
            secure_suffix = await self._round()
        if self.args.encrypt:
            for name, unit, value, target in _encrypt.compare(self.metrics):
                self.metrics[name] = Metric(name, unit, [value], target=target)
        if self.args.secure:
            for name, unit, value, target in compare(self.metrics, secure_suffix):
                self.metrics[name] = Metric(name, unit, [value], target=target)

    async def _round(self) -> str:
        """Every pass asked for once (plain, encrypted, auth on, policy on): the auth pass's
        suffix."""
        with tempfile.TemporaryDirectory(prefix="immortal-bench-") as tmp:
            async with NatsServer(store_dir=Path(tmp) / "nats") as server:
                self.url = server.url
                self.server = server
                self.tmp = Path(tmp)
                self.secure, self.suffix = None, ""
                for name in self.args.workload or WORKLOADS:
                    await getattr(self, f"w_{name}")()
                if self.args.encrypt:
                    (self.codec, self.codec_env), self.suffix = _encrypt.key_ring(), _encrypt.SUFFIX
                    for name in self.args.workload:
                        await getattr(self, f"w_{name}")()
                    self.codec, self.codec_env, self.suffix = None, {}, ""
            if self.args.secure and (self.args.signing or self.args.encrypt):
                await self._secure_pass(Path(tmp) / "auth-alone", alone=True)  # the baseline
            secure_suffix = await self._secure_pass(Path(tmp)) if self.args.secure else ""
            if self.args.policy:
                text = BENCH_POLICY if self.args.policy == "-" else self.args.policy.read_text()
                async with secure_server(Path(tmp) / "policy", policy=text) as secure:
                    self.secure, self.suffix = secure, POLICY_SUFFIX
                    self.url, self.server = secure.server.url, secure.server
                    for name in self.args.workload:
                        await getattr(self, f"w_{name}")()
                    await self._decisions_logged()
        return secure_suffix

    async def _secure_pass(self, tmp: Path, *, alone: bool = False) -> str:
        """The workloads with auth on (and signing, encryption, when asked; ``alone``: with
        neither, the baseline they are measured against): its suffix."""
        async with secure_server(tmp, signing=self.args.signing and not alone) as secure:
            self.secure, suffix = secure, secure.suffix
            if self.args.encrypt and not alone:  # every part of the security on at once
                self.codec, self.codec_env = _encrypt.key_ring()
                suffix = suffix.replace(" on]", "+encryption on]")
            self.suffix = suffix
            self.url, self.server = secure.server.url, secure.server
            for name in self.args.workload:
                await getattr(self, f"w_{name}")()
            self.codec, self.codec_env = None, {}
            if self.args.signing and not alone:
                await self._signed_proof()
        return suffix

    async def _decisions_logged(self) -> None:
        """Proof that the policy pass decided: the decision log's size."""
        assert self.secure is not None
        admin = await nats.connect(self.url, **self.secure.admin)
        try:
            info = await admin.jetstream().stream_info("IMM_AUDIT")
            print(f"policy pass: IMM_AUDIT holds {info.state.messages} messages "
                  f"({info.state.bytes / 1e6:.1f} MB) of decisions", flush=True)  # fmt: skip
        finally:
            await admin.close()

    async def _signed_proof(self) -> None:
        """That the signed pass was checked: the hubs stored a nonce per input by request,
        and opened signing sessions (the inputs after each signer's first went under one)."""
        assert self.secure is not None
        admin = await nats.connect(self.url, **self.secure.admin)
        try:
            info = await admin.jetstream().stream_info("KV_imm-nonces")
            sessions = await admin.jetstream().stream_info("KV_imm-sessions")
            print(
                f"  signed inputs' nonces stored by the hubs: {info.state.messages:,}; "
                f"signing sessions opened: {sessions.state.messages:,}"
            )
        finally:
            await admin.close()

    # -- the broker's own limit --------------------------------------------------------

    async def w_jetstream(self) -> None:
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        seq_m = self.metric("jetstream publish, sequential", "msg/s")
        pipe_m = self.metric("jetstream publish, pipelined", "msg/s")
        payload = b"x" * 100
        for trial in range(self.args.trials):
            name = f"BENCH_LIMIT_{trial}"
            await js.add_stream(
                StreamConfig(name=name, subjects=[f"limit.{trial}"], storage=StorageType.FILE)
            )
            n = 1000
            t0 = time.perf_counter()
            for _ in range(n):
                await js.publish(f"limit.{trial}", payload)
            seq_m.values.append(n / (time.perf_counter() - t0))
            n = 10_000
            t0 = time.perf_counter()
            futs = [await js.publish_async(f"limit.{trial}", payload) for _ in range(n)]
            await asyncio.gather(*futs)
            pipe_m.values.append(n / (time.perf_counter() - t0))
            await js.delete_stream(name)
        await nc.close()

    async def w_cli(self) -> None:
        await cli(self)  # bench/_cli.py: whole-process time of read commands

    # -- Immortal workloads ------------------------------------------------------------

    async def _cluster(
        self, workers: int | None = None, **worker_kw: Any
    ) -> tuple[list[Proc], list[Proc]]:
        hubs = [
            await start_hub(self.url, i, *self.hub_options, env=self.env("hub"))
            for i in range(self.args.hubs)
        ]
        env = {**self.env("worker"), **worker_kw.pop("env", {})}
        ws = [
            await start_worker(self.url, i, env=env, **worker_kw)
            for i in range(workers or self.args.workers)
        ]
        return hubs, ws

    async def _stop(self, procs: list[Proc]) -> None:
        await asyncio.gather(*(p.stop() for p in procs))

    async def _stream_counts(self, nc: Any) -> dict[str, int]:
        if self.secure:  # a tenant may not read stream info: count as the service user
            admin = await nats.connect(self.url, **self.secure.admin)
            try:
                return await self._stream_counts_on(admin)
            finally:
                await admin.close()
        return await self._stream_counts_on(nc)

    async def _stream_counts_on(self, nc: Any) -> dict[str, int]:
        js = nc.jetstream()
        out = {}
        for s in STREAMS:
            info = await js.stream_info(s)
            out[s] = info.state.last_seq
        return out

    async def _many(self, workflow: str, n: int, label: str, *, resources: bool = False) -> None:
        wfs = self.metric(f"{label}: completed", "wf/s")
        p50 = self.metric(f"{label}: start-to-result p50", "ms")
        p99 = self.metric(f"{label}: start-to-result p99", "ms")
        for _ in range(self.args.trials):
            hubs, workers = await self._cluster()
            try:
                async with self.client() as client, self.completions(client) as done:
                    await client.start(workflow, 0)  # warm up: queue registered, consumers exist
                    await asyncio.sleep(0.5)
                    before = await self._stream_counts(client.nc)
                    cpu0 = {p.name: p.cpu_seconds() for p in [*hubs, *workers]}
                    cpu0["client"] = cpu_seconds(os.getpid())
                    cpu0["nats-server"] = cpu_seconds(self.server.proc.pid)  # type: ignore[union-attr]
                    gate = asyncio.Semaphore(self.args.in_flight)
                    latencies: list[float] = []

                    async def one(
                        i: int, gate: asyncio.Semaphore = gate, latencies: list[float] = latencies
                    ) -> None:
                        async with gate:
                            t0 = time.perf_counter()
                            handle = await client.start(workflow, i)
                            t1 = await done.wait(handle.run_id)
                            latencies.append((t1 - t0) * 1000)

                    t0 = time.perf_counter()
                    await asyncio.wait_for(
                        asyncio.gather(*(one(i) for i in range(n))), self.args.timeout
                    )
                    elapsed = time.perf_counter() - t0
                    wfs.values.append(n / elapsed)
                    p50.values.append(pct(latencies, 50))
                    p99.values.append(pct(latencies, 99))
                    after = await self._stream_counts(client.nc)
                    ops = {k: (after[k] - before[k]) / n for k in STREAMS}
                    key = f"{label}: writes per workflow{self.suffix}"
                    self.extra.setdefault(key, []).append(ops)
                    if resources:
                        self._resources(hubs, workers, cpu0, elapsed)
            finally:
                await self._stop([*workers, *hubs])

    def _resources(
        self, hubs: list[Proc], workers: list[Proc], cpu0: dict[str, float], elapsed: float
    ) -> None:
        procs = {p.name: p.pid for p in [*hubs, *workers]}
        procs["client"] = os.getpid()
        procs["nats-server"] = self.server.proc.pid  # type: ignore[union-attr]
        for name, pid in procs.items():
            kind = name.rstrip("0123456789")
            self.metric(f"cpu {kind} ({name})", "s").values.append(cpu_seconds(pid) - cpu0[name])
            self.metric(f"peak rss {kind} ({name})", "MB").values.append(peak_rss_mb(pid))
        self.metric("throughput run wall time", "s").values.append(elapsed)

    async def w_throughput(self) -> None:
        await self._many("one_activity", self.args.n, "1 activity", resources=True)
        self.metrics["1 activity: completed" + self.suffix].target = ">= 500"

    async def w_sequential5(self) -> None:
        await self._many("five_sequential", max(self.args.n // 4, 100), "5 sequential activities")

    async def w_fanout10(self) -> None:
        await self._many("fan_out_ten", max(self.args.n // 8, 100), "fan-out of 10 activities")

    async def w_latency(self) -> None:
        p50 = self.metric("unloaded latency p50", "ms", target="<= 5")
        p99 = self.metric("unloaded latency p99", "ms")
        for _ in range(self.args.trials):
            hubs, workers = await self._cluster()
            try:
                async with self.client() as client, self.completions(client) as done:
                    lat = []
                    for i in range(self.args.latency_n + 10):
                        t0 = time.perf_counter()
                        handle = await client.start("one_activity", i)
                        t1 = await asyncio.wait_for(done.wait(handle.run_id), 30)
                        if i >= 10:  # the first few warm up caches and consumers
                            lat.append((t1 - t0) * 1000)
                    p50.values.append(pct(lat, 50))
                    p99.values.append(pct(lat, 99))
            finally:
                await self._stop([*workers, *hubs])

    async def w_timers(self) -> None:
        """Timer lateness: many concurrent 1 s durable sleeps, read back from the histories.

        ``fired`` is when the hub recorded the firing (TimerFired minus its due time);
        ``resumed`` is when the workflow code, woken on a worker, recorded its next step
        (the WorkflowTaskCompleted after the firing): lateness as the workflow sees it.
        """
        fired = self.metric("timer lateness (fired) p50", "ms")
        fired99 = self.metric("timer lateness (fired) p99", "ms", target="< 20")
        resumed = self.metric("timer lateness (workflow resumed) p50", "ms")
        resumed99 = self.metric("timer lateness (workflow resumed) p99", "ms")
        for _ in range(self.args.trials):
            hubs, workers = await self._cluster()
            try:
                async with Client(self.url) as client:
                    await (await client.start("sleep_once", 0.01)).result(timeout=30)  # warm up
                    handles = await asyncio.gather(
                        *(client.start("sleep_once", 1.0) for _ in range(self.args.timers_n))
                    )
                    await asyncio.gather(*(h.result(timeout=60) for h in handles))
                    late_fired, late_resumed = [], []
                    for h in handles:
                        events = await h.history()
                        fire = next(e for e in events if e.type.value == "TimerFired")
                        due = int(fire.attrs["due"])
                        late_fired.append(fire.ts - due)
                        step = next(
                            e
                            for e in events
                            if e.id > fire.id and e.type.value == "WorkflowTaskCompleted"
                        )
                        late_resumed.append(step.ts - due)
                    fired.values.append(pct(late_fired, 50))
                    fired99.values.append(pct(late_fired, 99))
                    resumed.values.append(pct(late_resumed, 50))
                    resumed99.values.append(pct(late_resumed, 99))
            finally:
                await self._stop([*workers, *hubs])

    async def w_soak(self) -> None:
        """Hub memory across many completed workflows: it must stay flat."""
        n, step = self.args.soak_n, max(self.args.soak_n // 10, 1)
        hubs, workers = await self._cluster()
        samples: list[tuple[int, float]] = []
        try:
            async with Client(self.url) as client, Completions(client.nc) as done:
                gate = asyncio.Semaphore(self.args.in_flight)

                async def one(i: int) -> None:
                    async with gate:
                        handle = await client.start("one_activity", i)
                        await done.wait(handle.run_id)
                        done.done.pop(handle.run_id, None)

                for start in range(0, n, step):
                    await asyncio.gather(*(one(i) for i in range(start, min(start + step, n))))
                    samples.append((start + step, rss_mb(hubs[0].pid)))
                    print(
                        f"  soak: {start + step:>7} done, hub rss {samples[-1][1]:.1f} MB",
                        flush=True,
                    )
        finally:
            await self._stop([*workers, *hubs])
        self.extra["soak: hub rss MB by workflows done"] = samples
        first = samples[min(1, len(samples) - 1)][1]  # after warm-up
        self.metric("soak: hub rss growth after warm-up", "MB", target="flat").values.append(
            samples[-1][1] - first
        )

    async def w_list(self) -> None:
        await run_list(self)

    async def w_dead_worker(self) -> None:
        m = self.metric(
            "dead worker (SIGKILL 0.5 s into the activity): restarted elsewhere after",
            "s",
            target="< 3",
        )
        lease = self.args.lease
        self.extra["dead worker lease (s)"] = lease
        for trial in range(self.args.dead_trials):
            marks = self.tmp / f"marks-{trial}"
            marks.mkdir()
            hubs, workers = await self._cluster(
                workers=2, lease=lease, env={"IMMORTAL_BENCH_DIR": str(marks)}
            )
            try:
                async with Client(self.url) as client:
                    await client.start("held", f"t{trial}")  # marks files "t<trial>.<pid>"
                    tag = f"t{trial}"  # earlier trials' activities may still be redelivered
                    first = await wait_marks(marks, 1, tag)
                    victim = next(w for w in workers if w.pid == int(first[0].suffix[1:]))
                    # Mid-activity: 0.5 s after it started. A worker lists the tasks it holds
                    # in imm-workers within ~0.1 s of taking them; one killed sooner than that
                    # is only found when the task's lease (--lease) runs out.
                    await asyncio.sleep(0.5)
                    await victim.kill()
                    killed = time.time()
                    second = await wait_marks(marks, 2, tag, timeout=lease * 3 + 30)
                    m.values.append(float(second[-1].read_text()) - killed)
            finally:
                await self._stop([*workers, *hubs])

    async def w_frozen_worker(self) -> None:
        await frozen_worker(self)

    async def w_fairness(self) -> None:
        await fairness(self)

    async def w_fairness_batch(self) -> None:
        await fairness_batch(self)

    async def w_policy(self) -> None:
        """Decision cost, built-in engine and Cedar, 1,000 rules and 10,000 tuples."""
        shape = _policy.measure(self.metric, trials=self.args.trials)
        self.extra["policy"] = shape
        print(f"  {_policy.report(shape)}", flush=True)

    async def w_signing_stack(self) -> None:
        """Signing's cost on a whole workflow, in one process (bench/_signing_stack.py)."""
        shape = await _signing_stack.measure(self.metric)
        self.extra["signing_stack"] = shape
        print(f"  {_signing_stack.report(shape)}", flush=True)

    async def w_signing(self) -> None:
        """Sign and check one input, on the CPU (bench/_signing.py)."""
        shape = _signing.measure(self.metric, trials=self.args.trials)
        self.extra["signing"] = shape
        print(f"  {_signing.report(shape)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-w", "--workload", action="append", choices=WORKLOADS + OPTIONAL, help="run only these"
    )
    ap.add_argument("--soak-n", type=int, default=100_000, help="workflows in the soak run")
    ap.add_argument("--hubs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the passes (plain, --encrypt, --secure, --policy) side by side this many "
        "times, each with its --trials; costs are taken from the medians",
    )
    ap.add_argument("-n", type=int, default=2000, help="workflows per throughput trial")
    ap.add_argument(
        "--in-flight", type=int, default=1000, help="workflows started but not finished"
    )
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--timers-n", type=int, default=100, help="concurrent sleeps per trial")
    ap.add_argument("--lease", type=float, default=30.0, help="worker lease in the dead-worker run")
    ap.add_argument("--dead-trials", type=int, default=1)
    ap.add_argument("--burst-n", type=int, default=1500, help="tenant A's burst (fairness)")
    ap.add_argument(
        "--fair-singles", type=int, default=20, help="tenant B's workflows, one at a time"
    )
    ap.add_argument(
        "--fair-pace", type=float, default=0.15, help="seconds between B's starts (fairness)"
    )
    ap.add_argument("--fair-n", type=int, default=50, help="tenant B's batch (fairness_batch)")
    ap.add_argument(
        "--tenant-limit",
        action="append",
        metavar="TENANT=in_flight:N,rate:R",
        help="passed to every hub",
    )
    ap.add_argument("--hub-max-in-flight", type=int, help="passed to every hub")
    ap.add_argument("--hub-concurrency", type=int, help="passed to every hub")
    ap.add_argument("--hub-max-writes", type=int, help="passed to every hub")
    ap.add_argument("--list-n", type=int, default=100_000, help="runs in the list tenant")
    ap.add_argument("--list-real", type=int, default=2000, help="of those, made the real way")
    ap.add_argument("--list-reps", type=int, default=20, help="timed calls per query, per trial")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument(
        "--secure",
        action="store_true",
        help="run the workloads again with auth on (throughput, latency), and compare",
    )
    ap.add_argument(
        "--encrypt",
        action="store_true",
        help="run the workloads again with payloads encrypted (throughput, latency), and compare",
    )
    ap.add_argument(
        "--policy",
        nargs="?",
        const="-",
        type=lambda v: v if v == "-" else Path(v),
        help="with --secure: a third pass with a tenant policy (bench/_secure.BENCH_POLICY, "
        "or this file, for tenant default) decided on every start and activity",
    )
    ap.add_argument(
        "--signing",
        action="store_true",
        help="with --secure: the second pass signs every input and its hubs require it",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if (args.secure and not set(args.workload or []) <= {"throughput", "latency"}) or (
        args.secure and not args.workload
    ):
        ap.error("--secure runs with -w throughput and/or -w latency")
    if args.encrypt and not (args.workload and set(args.workload) <= {"throughput", "latency"}):
        ap.error("--encrypt runs with -w throughput and/or -w latency")
    if args.policy and not args.secure:
        ap.error("--policy runs with --secure")
    if args.signing and not args.secure:
        ap.error("--signing goes with --secure (signatures are checked with auth on)")
    bench = Bench(args)
    asyncio.run(bench.run())
    print(f"\nImmortal bench: {args.hubs} hub(s) x {args.workers} worker(s), {args.trials} trials, "
          f"{os.cpu_count()} cores, nats-server with sync_interval: always\n")  # fmt: skip
    metrics = list(bench.metrics.values())
    print(table(metrics))
    limit = bench.metrics.get("jetstream publish, pipelined")
    for key, samples in bench.extra.items():
        if key.endswith("writes per workflow"):
            total = [sum(s.values()) for s in samples]
            print(f"\n{key}: {samples[0]}  (total {sum(total) / len(total):.1f})")
            if limit and limit.values and "1 activity" in key:
                ceiling = sorted(limit.values)[len(limit.values) // 2] / (sum(total) / len(total))
                print(
                    f"  => the broker allows ~{ceiling:,.0f} wf/s at this many writes (acks aside)"
                )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / time.strftime("%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "metrics": {m.name: {"unit": m.unit, "values": m.values} for m in metrics},
        "extra": bench.extra,
    }, indent=2))  # fmt: skip
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
