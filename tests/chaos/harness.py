"""A deployment to break: nats-server (or a three-node cluster), hubs and workers as
processes, a supervisor that restarts what dies (as Kubernetes or systemd would), and the
fault injectors. The workload and the checks are in ``driver.py`` and ``checker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from immortal import Client
from immortal.security import ConnectSecurity
from immortal.testing import NatsServer, Process, _die_with_parent

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 2.0


@dataclass
class Slot:
    """One hub or worker position; the supervisor keeps a process in it unless it is held."""

    kind: str  # "hub" | "worker"
    index: int
    proc: Process | None = None
    held: bool = False  # a fault keeps it down (or frozen) for now
    incarnation: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"


@dataclass
class Deployment:
    tmp: Path
    ledger: Path
    hubs: int = 2
    workers: int = 3
    cluster: bool = False
    secure: bool = False  # auth on: the callout, the auth service, a token per process
    signed: bool = False  # and every input signed (workers and the client hold a key each)
    nats: Any = None  # NatsServer | NatsCluster
    auth: Any = None  # (LocalIssuer, AuthService) when secure
    slots: list[Slot] = field(default_factory=list)
    restarts: Counter[str] = field(default_factory=Counter)
    _supervisor: asyncio.Task[None] | None = None
    _keys: dict[str, Any] = field(default_factory=dict)  # signing keys, when signed
    _stopping: bool = False
    _drains: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        if self.cluster:
            return ",".join(self.nats.urls)
        return str(self.nats.url)

    @property
    def urls(self) -> list[str]:
        return list(self.nats.urls) if self.cluster else [self.nats.url]

    async def start(self) -> None:
        if self.cluster:
            from immortal.testing import NatsCluster  # type: ignore[attr-defined]

            self.nats = NatsCluster(base_dir=self.tmp / "cluster")
        elif self.secure:
            self.nats = await self._secure_server()
        else:
            self.nats = NatsServer(store_dir=self.tmp / "nats")
            await self.nats.start()
        if self.cluster:
            await self.nats.start()
        self.slots = [Slot("hub", i) for i in range(self.hubs)]
        self.slots += [Slot("worker", i) for i in range(self.workers)]
        for slot in self.slots:  # hubs first: the first one creates the streams
            if slot.kind == "worker" and self.signed and not self._keys:
                await self._register_keys()  # before any signer sends an input
            await self._launch(slot)
        self._supervisor = asyncio.create_task(self._supervise())

    async def _secure_server(self) -> NatsServer:
        from immortal_hub.auth import AuthService, callout_config, new_account_seed, public_key
        from immortal_hub.auth.local import LocalIssuer

        issuer, seed = LocalIssuer(), new_account_seed()
        self._password = uuid.uuid4().hex
        server = NatsServer(
            store_dir=self.tmp / "nats",
            extra_config=callout_config(
                public_key(seed), service_user="immortal-auth", service_password=self._password
            ),
        )
        await server.start()
        service = AuthService(
            server.url,
            config=issuer.config(),
            issuer_seed=seed,
            user="immortal-auth",
            password=self._password,
        )
        await service.start()  # in the test's process: the faults never touch it
        self.auth = (issuer, service)
        return server

    async def _register_keys(self) -> None:
        """The tenant's key registry, as its admin would write it (``immortal keys add``)."""
        from immortal.security.keys import KeyRegistry, RegisteredKey, registry_key
        from immortal.security.signing import SigningKey

        self._keys = {k: SigningKey.generate(f"chaos-{k}") for k in ("worker", "client")}
        nc = await nats.connect(self.url, user="immortal-auth", password=self._password)
        try:
            kv = await nc.jetstream().key_value("imm-policy")
            entries = tuple(RegisteredKey(k.key_id, k.public_key) for k in self._keys.values())
            await kv.put(registry_key("default"), KeyRegistry(entries).to_bytes())
        finally:
            await nc.close()
        await asyncio.sleep(1.0)  # the hubs watch the registry: it applies within a second

    def _signing_env(self, kind: str) -> dict[str, str]:
        if not self.signed or kind != "worker":
            return {}
        key = self._keys["worker"]
        return {"IMMORTAL_SIGNING_KEY": f"{key.key_id}:{key.to_json()['seed']}"}

    def token(self, kind: str) -> str:
        issuer = self.auth[0]
        if kind == "hub":
            return str(issuer.token(f"chaos-{kind}", ["immortal-system:hub"]))
        if kind == "worker":
            return str(issuer.token("chaos-worker", ["default:worker"], queues=["default"]))
        return str(issuer.token("chaos-client", ["default:writer"]))

    def client(self) -> Client:
        """The driver's client: with auth on, a writer of tenant default."""
        if not self.secure:
            return Client(self.urls)
        signer = None
        if self.signed:
            from immortal.security.signing import Signer

            signer = Signer([self._keys["client"]])
        return Client(
            self.urls, security=ConnectSecurity.with_token(self.token("client"), signer=signer)
        )

    async def checker_client(self) -> Client:
        """The checker reads stream state no tenant may read: the service user's login."""
        if not self.secure:
            return Client(self.urls)
        nc = await nats.connect(self.url, user="immortal-auth", password=self._password)
        return Client(self.urls, nc=nc)

    async def close(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for slot in self.slots:
            if slot.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.proc.send_signal(signal.SIGCONT)
                await slot.proc.stop(timeout=5)
        await self.nats.close()
        if self.auth is not None:
            await self.auth[1].stop()
            self.auth[0].close()

    # -- processes ------------------------------------------------------------------------

    async def _launch(self, slot: Slot) -> None:
        slot.incarnation += 1
        log = open(self.tmp / f"{slot.name}.{slot.incarnation}.log", "wb")  # noqa: ASYNC230
        if slot.kind == "hub":
            args = ["-m", "immortal_hub", "hub", "--server", self.url, "--ack-wait", "2"]
            if self.cluster:
                args += ["--replicas", "3"]
        else:
            args = [
                "-m", "immortal_worker", "tests.chaos.workload", "--server", self.url,
                "--lease", str(LEASE_S), "--grace", "2",
                "--id", f"{slot.name}-{slot.incarnation}",
            ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            "--log-level",
            "WARNING",
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "IMMORTAL_CHAOS_LEDGER": str(self.ledger),
                **({"IMMORTAL_TOKEN": self.token(slot.kind)} if self.secure else {}),
                **self._signing_env(slot.kind),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            preexec_fn=_die_with_parent,  # no orphans if the suite itself is killed
        )
        log.close()
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                while b"ready" not in (line := await proc.stdout.readline()):
                    if not line:
                        raise RuntimeError(f"{slot.name} exited before it was ready")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        drain = asyncio.create_task(_drain(proc.stdout))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)
        slot.proc = Process(proc, slot.name)

    async def _supervise(self) -> None:
        """Restart any hub or worker that exited and is not held down by a fault."""
        while not self._stopping:
            for slot in self.slots:
                exited = slot.proc is None or slot.proc.proc.returncode is not None
                if exited and not slot.held:
                    if slot.proc is not None:
                        self.restarts[slot.kind] += 1
                    slot.proc = None
                    try:
                        await self._launch(slot)
                    except Exception:  # the server may be down right now: try again soon
                        await asyncio.sleep(0.5)
            await asyncio.sleep(0.2)

    def live(self, kind: str) -> list[Slot]:
        return [
            s
            for s in self.slots
            if s.kind == kind and not s.held and s.proc and s.proc.proc.returncode is None
        ]


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


# -- faults ---------------------------------------------------------------------------------

Injector = Callable[[Deployment, random.Random, Counter[str]], Awaitable[None]]


async def _kill_one(dep: Deployment, rng: random.Random, faults: Counter[str], kind: str) -> None:
    candidates = dep.live(kind)
    if not candidates:
        return
    slot = rng.choice(candidates)
    slot.held = True
    assert slot.proc is not None
    await slot.proc.kill()
    faults[f"SIGKILL {kind}"] += 1
    await asyncio.sleep(rng.uniform(0.0, 1.5))  # down a while, then the supervisor restarts it
    slot.held = False


async def _freeze_one(dep: Deployment, rng: random.Random, faults: Counter[str], kind: str) -> None:
    candidates = dep.live(kind)
    if not candidates:
        return
    slot = rng.choice(candidates)
    assert slot.proc is not None
    slot.held = True
    slot.proc.proc.send_signal(signal.SIGSTOP)
    faults[f"SIGSTOP {kind}"] += 1
    # Sometimes shorter than the lease and the liveness TTL, sometimes well past both.
    await asyncio.sleep(rng.uniform(0.3, 3 * LEASE_S))
    with contextlib.suppress(ProcessLookupError):
        slot.proc.proc.send_signal(signal.SIGCONT)
    slot.held = False


async def worker_kill(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    await _kill_one(dep, rng, faults, "worker")


async def worker_stop(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(0.5, 2.0))
    await _freeze_one(dep, rng, faults, "worker")


async def hub_kill(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(0.5, 2.5))
    await _kill_one(dep, rng, faults, "hub")


async def hub_stop(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(0.5, 2.5))
    await _freeze_one(dep, rng, faults, "hub")


async def nats_restart(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(3.0, 7.0))
    await dep.nats.restart()  # SIGTERM: a clean shutdown, same port and store
    faults["nats-server restart"] += 1


async def nats_kill(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(3.0, 7.0))
    await dep.nats.kill()
    faults["nats-server SIGKILL"] += 1
    await asyncio.sleep(rng.uniform(0.0, 1.0))
    await dep.nats.start()


async def cluster_node_kill(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(rng.uniform(3.0, 6.0))
    node = rng.randrange(3)
    await dep.nats.kill(node)
    faults["cluster node SIGKILL"] += 1
    await asyncio.sleep(rng.uniform(1.0, 4.0))
    await dep.nats.start_node(node)


async def no_fault(dep: Deployment, rng: random.Random, faults: Counter[str]) -> None:
    await asyncio.sleep(1.0)


INJECTORS: dict[str, Injector] = {
    "worker-sigkill": worker_kill,
    "worker-sigstop": worker_stop,
    "hub-sigkill": hub_kill,
    "hub-sigstop": hub_stop,
    "nats-restart": nats_restart,
    "nats-sigkill": nats_kill,
    "cluster-node-kill": cluster_node_kill,
    "duplicates": no_fault,  # the faults come from the driver: every input sent twice
    "poison": no_fault,  # the faults come from the workload: activities that crash workers
}


async def inject(
    name: str, dep: Deployment, rng: random.Random, faults: Counter[str], stop: asyncio.Event
) -> None:
    injector = INJECTORS[name]
    while not stop.is_set():
        await injector(dep, rng, faults)
