"""Every nats-server config Immortal ships fsyncs before it acknowledges."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import trustme

from immortal.testing import NatsServer, find_nats_server
from immortal_hub.auth import new_account_seed, public_key

ROOT = Path(__file__).resolve().parent.parent


def _shipped_configs() -> list[Path]:
    return [ROOT / "nats.conf", *sorted((ROOT / "deploy").rglob("*.conf"))]


def test_every_shipped_config_sets_sync_interval_always() -> None:
    for conf in _shipped_configs():
        text = conf.read_text()
        if "jetstream" in text:
            assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.M), conf


def test_nats_server_accepts_every_shipped_config(tmp_path: Path) -> None:
    # The secure configs name certificates under certs/ (relative to where the server
    # runs) and take the auth service's key and password from the environment.
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.cert_pem.write_to_path(certs / "ca.pem")
    for stem, names in (("server", ["nats-1", "localhost"]), ("route", ["nats-1", "nats-2"])):
        leaf = ca.issue_cert(*names)
        leaf.cert_chain_pems[0].write_to_path(certs / f"{stem}.pem")
        leaf.private_key_pem.write_to_path(certs / f"{stem}-key.pem")
    env = {
        **os.environ,
        "IMMORTAL_AUTH_ACCOUNT": public_key(new_account_seed()),
        "IMMORTAL_AUTH_PASSWORD": "test-only",
    }
    for conf in _shipped_configs():
        checked = subprocess.run(
            [find_nats_server(), "-c", str(conf), "-t"],
            capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert checked.returncode == 0, (conf, checked.stdout, checked.stderr)


def test_the_secure_configs_verify_client_and_route_certificates() -> None:
    for conf in sorted((ROOT / "deploy" / "secure").rglob("*.conf")):
        text = conf.read_text()
        assert text.count("verify: true") == (2 if "cluster {" in text else 1), conf
        assert "include" in text and "auth-callout.inc" in text, conf


def test_the_cluster_configs_name_three_nodes_that_route_to_each_other() -> None:
    confs = sorted((ROOT / "deploy" / "nats-cluster").glob("*.conf"))
    assert len(confs) == 3
    names, routes = set(), []
    for conf in confs:
        text = conf.read_text()
        found = re.search(r"^server_name:\s*(\S+)\s*$", text, re.M)
        assert found, conf
        names.add(found.group(1))
        routes.append(sorted(re.findall(r"nats-route://(\S+)", text)))
    assert len(names) == 3  # JetStream needs a unique server_name per node
    assert len(routes[0]) == 3 and routes.count(routes[0]) == 3  # each lists all three


async def test_the_running_test_server_reports_sync_always(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    async with NatsServer(
        store_dir=tmp_path, extra_config=f"http: 127.0.0.1:{http_port}"
    ) as server:
        assert server.proc is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/varz", timeout=5) as resp:
            varz = json.load(resp)
    js = varz["jetstream"]["config"]
    assert js.get("sync_always") is True or js.get("sync_interval") in ("always",), js


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _hub_says(url: str, monitor: str) -> str:
    """What `immortal hub` logs up to its "ready" line (then it is stopped)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", "hub", "-s", url, "--monitor", monitor, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert b"ready" in await proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode()


async def test_the_hub_warns_when_jetstream_does_not_sync_every_write(tmp_path: Path) -> None:
    port, http_port = _free_port(), _free_port()
    conf = tmp_path / "plain.conf"  # JetStream with its default sync_interval (2 minutes)
    conf.write_text(
        f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
    )
    server = await asyncio.create_subprocess_exec(
        find_nats_server(), "-c", str(conf), stderr=asyncio.subprocess.PIPE
    )
    assert server.stderr is not None
    try:
        async with asyncio.timeout(10):
            while b"Server is ready" not in await server.stderr.readline():
                pass
        said = await _hub_says(f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{http_port}")
    finally:
        server.terminate()
        await server.wait()
    assert (
        f"WARNING immortal_hub._durability: JetStream at nats://127.0.0.1:{port} syncs writes "
        "every 120 s, not always: a power failure can lose acknowledged history" in said
    ), said


async def test_the_hub_is_quiet_about_a_server_that_syncs_always(tmp_path: Path) -> None:
    http_port = _free_port()
    async with NatsServer(store_dir=tmp_path, extra_config=f"http: 127.0.0.1:{http_port}") as s:
        said = await _hub_says(s.url, f"http://127.0.0.1:{http_port}")
        # A monitoring port that belongs to another server proves nothing about this one.
        async with NatsServer(store_dir=tmp_path / "other") as other:
            unknown = await _hub_says(other.url, f"http://127.0.0.1:{http_port}")
    assert "_durability" not in said, said
    assert f"cannot tell whether JetStream at {other.url} syncs every write" in unknown, unknown
