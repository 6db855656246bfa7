"""Reading tools with encrypted payloads: `immortal workflow history`, `logs`, `replay`
open them with the key ring, and say per field why not without it."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from immortal import Client
from immortal_hub import Hub
from tests.codec_workflows import MARK, activities, enc_parent, workflows
from tests.helpers import running_worker
from tests.test_cli import ROOT
from tests.test_codec import K1, K2, codec


def _ring(path: Path, **keys: bytes) -> Path:
    current = next(iter(keys))
    encoded = {k: base64.b64encode(v).decode() for k, v in keys.items()}
    path.write_text(json.dumps({"current": current, "keys": encoded}))
    return path


def _cli(
    nats_url: str, prefix: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMMORTAL_CODEC")}
    where = [] if args[0] == "replay" else ["-s", nats_url, "--prefix", prefix]  # no server
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", *args, *where],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **(env or {})},
    )  # fmt: skip


@pytest.mark.timeout(120)
async def test_history_logs_result_and_replay_open_with_the_ring(
    nats_url: str, prefix: str, hub: Hub, tmp_path: Path
) -> None:
    right = _ring(tmp_path / "right.json", k1=K1)
    wrong = _ring(tmp_path / "wrong.json", k2=K2)
    async with (
        Client(nats_url, prefix=prefix, codec=codec()) as client,
        running_worker(nats_url, prefix, workflows=workflows, activities=activities, codec=codec()),
    ):
        first = await client.start(enc_parent, MARK, id="enc-cli")
        for _ in range(200):
            newest = await client.get_handle("enc-cli")
            if newest.run_id != first.run_id and await newest.status() is not None:
                break
            await asyncio.sleep(0.05)
        await newest.signal("go", "now")
        await first.result(timeout=30)
        await asyncio.sleep(0.5)  # the last log lines reach the stream

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return _cli(nats_url, prefix, *args, env=env)

    opened, blind, other, by_env = await asyncio.gather(
        asyncio.to_thread(run, "workflow", "history", "enc-cli", "--codec-keys", str(right)),
        asyncio.to_thread(run, "workflow", "history", "enc-cli"),
        asyncio.to_thread(run, "--codec-keys", str(wrong), "workflow", "history", "enc-cli"),
        asyncio.to_thread(
            run,
            "logs",
            "enc-cli",
            env={"IMMORTAL_CODEC_KEYS": f"k1={base64.b64encode(K1).decode()}"},
        ),
    )
    for done in (opened, blind, other, by_env):
        assert done.returncode == 0, done.stderr
    assert MARK in opened.stdout and "<encrypted" not in opened.stdout, opened.stdout
    assert "half of" in opened.stdout  # the heartbeat's details, opened
    assert MARK not in blind.stdout and "<encrypted (key k1)>" in blind.stdout, blind.stdout
    assert MARK not in other.stdout and "<encrypted: key k1 not in ring>" in other.stdout
    assert f"parent got {MARK}" in by_env.stdout and f"working on {MARK}" in by_env.stdout
    logs_blind = await asyncio.to_thread(run, "logs", "enc-cli")
    assert MARK not in logs_blind.stdout and "<encrypted (key k1)>" in logs_blind.stdout

    result = await asyncio.to_thread(
        run, "workflow", "result", "enc-cli", "--codec-keys", str(right)
    )
    assert result.returncode == 0 and MARK in result.stdout, result.stderr
    unreadable = await asyncio.to_thread(run, "workflow", "result", "enc-cli")
    assert unreadable.returncode == 1
    assert "result of run" in unreadable.stderr and "no key ring" in unreadable.stderr
    assert "Traceback" not in unreadable.stderr

    exported = await asyncio.to_thread(run, "workflow", "history", "enc-cli", "--json")
    assert exported.returncode == 0 and MARK not in exported.stdout  # as stored: sealed
    history = tmp_path / "enc-cli.json"
    history.write_text(exported.stdout)
    target = "tests.codec_workflows:enc_parent"
    replayed, refused = await asyncio.gather(
        asyncio.to_thread(run, "replay", str(history), "-w", target, "--codec-keys", str(right)),
        asyncio.to_thread(run, "replay", str(history), "-w", target),
    )
    assert replayed.returncode == 0 and ": ok (enc_parent" in replayed.stdout, replayed.stderr
    assert refused.returncode == 2
    assert "KeyNotInRingError" in refused.stderr and "continue:input of run" in refused.stderr
    bad = await asyncio.to_thread(run, "workflow", "history", "enc-cli", "--codec-keys", "nope")
    assert bad.returncode != 0 and "cannot read the key ring nope" in bad.stderr
    assert "Traceback" not in bad.stderr
