"""Hubs and workers as separate processes, for tests that kill them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from immortal.testing import Process as Proc

ROOT = Path(__file__).resolve().parent.parent


SKEWED_CLOCK = ROOT / "tests" / "skewed_clock"  # its sitecustomize skews the wall clock


def skewed_clock(skew_ms: float) -> dict[str, str]:
    """The environment of a process whose wall clock runs ``skew_ms`` off (+ ahead)."""
    return {
        "PYTHONPATH": f"{SKEWED_CLOCK}{os.pathsep}{ROOT}",
        "IMMORTAL_TEST_CLOCK_SKEW_MS": str(skew_ms),
    }


async def _spawn(name: str, args: list[str], env: dict[str, str], ready: str) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=None,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} exited before it was ready")
            if ready.encode() in line:
                break
    return Proc(proc, name)


async def start_hub(
    url: str, prefix: str = "imm", *options: str, env: dict[str, str] | None = None
) -> Proc:
    args = ["-m", "immortal_hub", "hub", "--server", url, "--prefix", prefix, "--monitor", "off"]
    args += [*options, "--ack-wait", "2", "--log-level", "WARNING"]
    return await _spawn("hub", args, env or {}, "ready")


async def start_worker(
    url: str,
    test_dir: Path,
    *,
    prefix: str = "imm",
    lease: float = 2.0,
    worker_id: str | None = None,
    grace: float = 10.0,
    env: dict[str, str] | None = None,
) -> Proc:
    args = [
        "-m", "immortal_worker", "tests.workflows",
        "--server", url, "--prefix", prefix, "--lease", str(lease), "--log-level", "WARNING",
    ]  # fmt: skip
    if worker_id:
        args += ["--id", worker_id]
    args += ["--grace", str(grace)]
    return await _spawn(
        "worker", args, {"IMMORTAL_TEST_DIR": str(test_dir), **(env or {})}, "ready"
    )
