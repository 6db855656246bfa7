"""What a careless user meets: no NATS where they point, no hub yet, a typo in an id, a run
that is closed, a payload too large, Ctrl-C while waiting. Each is one line and an exit
code, never a hang or a traceback. Run as processes, against real nats-servers."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

from immortal import Client
from immortal.testing import NatsServer, find_nats_server
from tests.helpers import running_worker, wait_for_history

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    """A port where nothing listens (bound and released: connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _immortal(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_immortal, *args)


def test_a_command_gives_up_on_an_unreachable_server_naming_it() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    # The default connect timeout is a few seconds: well within the 10 s allowed here.
    done = _immortal("workflow", "describe", "order-1", "-s", url, timeout=10)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].endswith(f"waiting for NATS at {url} (connection refused)")
    assert lines[-1] == f"error: cannot reach NATS at {url} within 3 s: connection refused"
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_connect_timeout_is_an_option_and_never_shows_credentials() -> None:
    port = _free_port()
    done = _immortal(
        "workers", "-s", f"nats://alice:s3cret@127.0.0.1:{port}", "--connect-timeout", "0.5"
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach NATS at nats://127.0.0.1:{port} within 0.5 s: connection refused"
    )
    assert "s3cret" not in done.stderr


async def _stops_on(signum: int, args: list[str]) -> tuple[int, str]:
    """Start a process pointed at nothing, wait until it says it waits, signal it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said = b""
    async with asyncio.timeout(10):
        while b"waiting for NATS at" not in said:
            line = await proc.stderr.readline()
            assert line, f"exited early: {said.decode()}"
            said += line
    proc.send_signal(signum)
    async with asyncio.timeout(10):  # a generous bound: it stops, not how fast
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, (said + err).decode()


async def test_a_worker_that_cannot_connect_stops_on_sigint() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    code, said = await _stops_on(
        signal.SIGINT, ["-m", "immortal_worker", "tests.workflows", "-s", url]
    )
    assert code == 0, said
    assert f"waiting for NATS at {url} (connection refused)" in said
    assert "Traceback" not in said


async def test_a_hub_that_cannot_connect_stops_on_sigterm_and_says_it_retries() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", "hub", "-s", url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said = b""
    async with asyncio.timeout(15):  # the first round of attempts, then the INFO line
        while b"still waiting for NATS" not in said:
            line = await proc.stderr.readline()
            assert line, f"exited early: {said.decode()}"
            said += line
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        await proc.communicate()
    assert proc.returncode == 0
    assert "INFO immortal._connect: " in said.decode()
    assert "trying again in 1 s" in said.decode()


async def test_a_server_no_hub_has_set_up_is_named_not_a_bucket_error(tmp_path: Path) -> None:
    async with NatsServer(store_dir=tmp_path / "bare") as bare:
        for args in (["workflow", "describe", "order-1"], ["workers"], ["schedule", "list"]):
            done = await _cli(*args, "-s", bare.url)
            assert done.returncode == 2, done.stderr
            assert done.stderr.splitlines() == [
                f"error: no Immortal hub has set up {bare.url} with prefix 'imm' yet "
                "(stream IMM_HISTORY not found): start one (`immortal hub`)"
            ]


async def test_not_found_closed_and_still_open_are_one_line(
    nats_url: str, prefix: str, client: Client
) -> None:
    conn = ["-s", nats_url, "--prefix", prefix]
    typo = await _cli("workflow", "describe", "no-such-order", *conn)
    assert typo.returncode == 1
    assert typo.stderr.splitlines() == ["error: no workflow 'no-such-order'"]

    async with running_worker(nats_url, prefix):
        handle = await client.start("three_step", 3, id="done-order")
        assert await handle.result(timeout=20) == 15
    closed = await _cli("workflow", "signal", "done-order", "approve", '"yes"', *conn)
    assert closed.returncode == 1
    assert closed.stderr.splitlines() == [
        f"error: cannot signal run {handle.run_id} of 'done-order': it is already completed"
    ]

    open_run = await client.start("three_step", 4, id="open-order")  # no worker serves it
    await wait_for_history(client, "open-order", open_run.run_id, bool)
    waited = await _cli("workflow", "result", "open-order", "--timeout", "0.5", *conn)
    assert waited.returncode == 1
    assert waited.stderr.splitlines() == [
        f"error: run {open_run.run_id} of 'open-order' is still open after 0.5 s"
    ]


async def test_debug_shows_the_traceback(nats_url: str, prefix: str, client: Client) -> None:
    conn = ["-s", nats_url, "--prefix", prefix]
    after = await _cli("workflow", "describe", "no-such-order", *conn, "--debug")
    assert after.returncode == 1
    assert "Traceback" in after.stderr and "WorkflowNotFoundError" in after.stderr
    assert after.stderr.splitlines()[-1] == "error: no workflow 'no-such-order'"


async def test_a_server_without_jetstream_is_named_by_every_command() -> None:
    port = _free_port()
    server = await asyncio.create_subprocess_exec(
        find_nats_server(), "-a", "127.0.0.1", "-p", str(port), stderr=asyncio.subprocess.PIPE
    )  # a plain nats-server: no -js
    assert server.stderr is not None
    try:
        async with asyncio.timeout(10):
            while b"Server is ready" not in await server.stderr.readline():
                pass
        url = f"nats://127.0.0.1:{port}"
        said = (
            f"error: the NATS server at {url} runs without JetStream: start it with -js, or "
            "`jetstream {}` in its config (see nats.conf)"
        )
        for args in (
            ["-m", "immortal_hub", "workers", "-s", url],
            ["-m", "immortal_hub", "hub", "-s", url],
            ["-m", "immortal_worker", "tests.workflows", "-s", url],
        ):
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, *args],
                capture_output=True, text=True, timeout=30, cwd=ROOT,
            )  # fmt: skip
            assert done.returncode == 2, (args, done.stderr)
            assert done.stderr.splitlines()[-1] == said, (args, done.stderr)
    finally:
        server.terminate()
        await server.wait()
