"""The package layout the project promises: dependency direction and the public API."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import immortal

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"immortal": ROOT / "common" / "immortal", "immortal_hub": ROOT / "hub" / "immortal_hub",
           "immortal_worker": ROOT / "worker" / "immortal_worker"}  # fmt: skip
FORBIDDEN = {
    "immortal": {"immortal_hub", "immortal_worker"},
    "immortal_hub": {"immortal_worker"},
    "immortal_worker": {"immortal_hub"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_dependencies_flow_one_way() -> None:
    for package, root in SOURCES.items():
        for path in root.rglob("*.py"):
            bad = _imports(path) & FORBIDDEN[package]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_public_api_is_pinned() -> None:
    assert sorted(immortal.__all__) == [
        "ActivityCancelledError", "ActivityError", "ApplicationError", "ChildWorkflowError", "Client", "EventType",
        "HistoryEvent", "IdReusePolicy", "ImmortalError", "LeaseMismatchError", "Names", "NonDeterminismError",
        "NotSetUpError", "PayloadError", "QueueStats", "RetryPolicy", "RunDescription", "RunStatus", "ScheduleInfo",
        "ServerUnreachableError", "UnknownWorkflowTypeError", "WorkerInfo",
        "WorkflowAlreadyStartedError", "WorkflowClosedError", "WorkflowContext", "WorkflowFailedError",
        "WorkflowHandle", "WorkflowInfo", "WorkflowNotFoundError", "activity", "format_timeline",
        "history_from_json", "history_to_json", "workflow",
    ]  # fmt: skip
    for name in immortal.__all__:
        assert getattr(immortal, name) is not None


def test_errors_share_one_root() -> None:
    for name in immortal.__all__:
        obj = getattr(immortal, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, immortal.ImmortalError), name


def test_modules_stay_small() -> None:
    for root in SOURCES.values():
        for path in root.rglob("*.py"):
            assert len(path.read_text().splitlines()) < 800, path


def test_the_cli_loads_no_hub_machinery_until_a_command_needs_it() -> None:
    probe = (
        "import sys, immortal_hub.cli; "
        "print(' '.join(m for m in sys.modules if m.startswith(('immortal', 'nats'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert "immortal_hub.cli.workflow" in loaded
    assert not {"immortal_hub._hub", "immortal.testing", "immortal_worker"} & set(loaded)
