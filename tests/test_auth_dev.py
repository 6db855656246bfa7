"""``immortal dev --secure`` as a newcomer runs it:
everything starts, the example runs as a writer, and the printed commands work: a writer
starts, a reader reads but may not start, no token is refused, each in one line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def test_dev_secure_runs_and_its_printed_commands_work(tmp_path: Path) -> None:
    store = tmp_path / "dev"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", "dev", "--secure", "--port", "0", "--store", str(store),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = ""
    try:
        async with asyncio.timeout(45):
            while "Ctrl-C stops everything" not in seen:
                line = await proc.stdout.readline()
                assert line, seen
                seen += line.decode()
        assert "(started by dev-writer)" in seen
        url = re.search(r"(tls://127\.0\.0\.1:\d+)", seen)
        assert url is not None
        tls = dict(re.findall(r"(IMMORTAL_TLS_\w+)=(\S+)", seen))
        assert set(tls) == {"IMMORTAL_TLS_CA", "IMMORTAL_TLS_CERT", "IMMORTAL_TLS_KEY"}

        def immortal(token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, **tls}
            env.pop("IMMORTAL_TOKEN", None)
            if token:
                env["IMMORTAL_TOKEN"] = (store / "tokens" / f"{token}.jwt").read_text()
            return subprocess.run(
                [sys.executable, "-m", "immortal_hub", *args, "-s", url.group(1)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        order = '{"id": "o2", "items": ["pen"], "cents": 150}'
        started = immortal(
            "writer", "workflow", "start", "place_order", order, "--id", "o2", "--wait"
        )
        assert started.returncode == 0, started.stderr
        history = immortal("reader", "workflow", "history", "o2")
        assert history.returncode == 0 and "by dev-writer (writer)" in history.stdout
        refused = immortal("reader", "workflow", "start", "place_order", order)
        assert refused.returncode == 2
        assert "'dev-reader' (role reader of tenant 'dev') may not start" in refused.stderr
        assert "Traceback" not in refused.stderr
        anonymous = immortal(None, "workflow", "describe", "o2")
        assert anonymous.returncode == 2 and "requires a token" in anonymous.stderr
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
