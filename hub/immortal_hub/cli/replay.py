"""``immortal replay``: recorded histories against workflow code, through the worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from immortal_hub.cli._common import CONNECT

__all__ = ["replay"]


def replay(
    histories: Annotated[
        list[Path], typer.Argument(help="JSON exports (immortal workflow history ID --json)")
    ],
    workflow: Annotated[
        list[str],
        typer.Option("--workflow", "-w", help="module:attribute holding the workflow code"),
    ],
) -> None:
    """Replay recorded histories against workflow code (no server): exit 0 if they replay
    cleanly, 1 printing the first divergence, 2 if one cannot be replayed.

    The same command as `immortal-worker replay`, which this runs as a subprocess
    (`python -m immortal_worker replay ...`): the hub package does not import the worker.
    """
    args = [sys.executable, "-m", "immortal_worker", "replay", *map(str, histories)]
    for ref in workflow:
        args += ["--workflow", ref]
    ring = CONNECT.get("codec_keys")  # `immortal --codec-keys F replay ...`
    args += ["--codec-keys", ring] if ring else []
    raise typer.Exit(subprocess.run(args, check=False).returncode)
