"""``immortal keys`` with auth on: an admin makes, registers, lists and retires a tenant's
signing keys; a writer may not; a CLI command signs with ``$IMMORTAL_SIGNING_KEY_FILE``;
mistakes are named, never a traceback."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from immortal import Client, EventType
from immortal_hub import Hub
from tests.security_fixtures import SecureStack, secure_stack

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[SecureStack, Hub]]:
    async with secure_stack(tmp_path) as s:
        hub = Hub(s.url, security=s.hub_security())
        await hub.start()
        try:
            yield s, hub
        finally:
            await hub.stop()


def _token(stack: SecureStack, subject: str, role: str) -> str:
    security = stack.security(subject, [f"acme:{role}"])
    assert security.token is not None
    return security.token()


async def immortal(
    stack: SecureStack, token: str | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMMORTAL_")}
    environ.update(env)
    if token:
        environ["IMMORTAL_TOKEN"] = token
    server = () if args[:2] == ("keys", "new") else ("-s", stack.url)  # offline
    command = [sys.executable, "-m", "immortal_hub", *args, *server]
    return await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error, one line (a broker's refusal is also logged by the connection)."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


async def test_an_admin_adds_lists_and_retires_keys_and_signers_follow(
    stack: tuple[SecureStack, Hub], tmp_path: Path
) -> None:
    s, hub = stack
    admin, writer = _token(s, "root", "admin"), _token(s, "ann", "writer")
    key_file = tmp_path / "k1.json"
    made = await immortal(s, None, "keys", "new", "k1", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    public_key = made.stdout.strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and public_key not in key_file.read_text()

    refused = await immortal(s, writer, "keys", "add", "k1", "--public-key", public_key)
    assert "not permitted: publish to '$kv.imm-policy.acme.keys'" in one_line(refused)

    added = await immortal(s, admin, "keys", "add", "k1", "--public-key", public_key)
    assert added.returncode == 0 and "added key k1 for tenant acme" in added.stdout, added.stderr
    listed = await immortal(s, writer, "keys", "list")  # reading is a reader's right
    assert listed.returncode == 0 and listed.stdout.split()[:2] == ["k1", "valid"], listed.stderr
    for _ in range(100):  # the hub watches the registry
        if hub._guard.signatures.registry("acme").keys:
            break
        await asyncio.sleep(0.02)

    signing = {"IMMORTAL_SIGNING_KEY_FILE": str(key_file)}
    start = ("workflow", "start", "three_step", "3", "--id", "cli-signed")
    started = await immortal(s, writer, *start, **signing)
    assert started.returncode == 0, started.stderr
    security = s.security("ann", ["acme:reader"])
    async with Client(s.url, security=security) as client:
        first = (await (await client.get_handle("cli-signed")).history())[0]
        assert first.type is EventType.WORKFLOW_STARTED and first.attrs["by"]["key_id"] == "k1"

    unsigned = await immortal(s, writer, "workflow", "start", "three_step", "3", "--id", "u1")
    assert "signature refused (unsigned)" in one_line(unsigned)

    retired = await immortal(s, admin, "keys", "retire", "k1")
    assert retired.returncode == 0 and "retired key k1" in retired.stdout, retired.stderr
    for _ in range(100):
        if hub._guard.signatures.registry("acme").keys[0].not_after is not None:
            break
        await asyncio.sleep(0.02)
    late = await immortal(
        s, writer, "workflow", "start", "three_step", "3", "--id", "r1", **signing
    )
    assert "key id 'k1' is retired" in one_line(late)
    listed = await immortal(s, admin, "keys", "list", "--json")
    assert '"status": "retired"' in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "k1", "--public-key", "abc"), "an Ed25519 public key is 32 bytes"),
        (("add", "bad id!", "--public-key", "A" * 43), "not a valid key id"),
        (("retire", "nope"), "key id 'nope' is not in the registry"),
        (("add", "k1", "--public-key", "A" * 43, "--not-before", "soon"), "neither ISO 8601"),
    ],
)
async def test_mistakes_are_named(
    stack: tuple[SecureStack, Hub], args: tuple[str, ...], message: str
) -> None:
    s, _ = stack
    result: Any = await immortal(s, _token(s, "root", "admin"), "keys", *args)
    # A bad option is typer's usage error (exit 2), as for every command; the rest is one
    # "error:" line.
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert message in " ".join(result.stderr.split()), result.stderr
