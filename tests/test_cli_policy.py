"""``immortal policy`` and ``immortal audit`` as a user runs them (processes), against a
real nats-server with auth on: apply (an admin's; errors naming line and rule), show,
test (exit 1 naming failures), explain (offline, stored, as a token), and the audit with
its filters, read as it is stored and followed live."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import immortal
from immortal import Client, WorkflowContext
from immortal_hub import Hub
from immortal_worker import Worker
from tests.security_fixtures import SecureStack, secure_stack
from tests.workflows import add, double, square, three_step

ROOT = Path(__file__).resolve().parent.parent


@immortal.workflow
async def pay(ctx: WorkflowContext, order: dict[str, int]) -> int:
    return await ctx.activity(double, order["amount"])


POLICY = """\
tenant: acme
version: 3
relations:
  - user:rita member team:support
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*]
  - id: r-small-only
    effect: deny
    roles: [writer]
    actions: [workflow.start]
    when: input.amount > 100
  - id: r-support
    effect: allow
    groups: [team:support]
    actions: [workflow.read]
  - id: r-admins
    effect: allow
    roles: [admin]
    actions: [admin.*]
"""

CASES = """\
policy: policy.yaml
cases:
  - name: a writer starts
    principal: {subject: ann, roles: [writer]}
    action: workflow.start
    resource: {workflow_type: three_step}
    expect: allow
  - name: support reads
    principal: {subject: rita}
    action: workflow.read
    resource: {workflow_id: x}
    expect: allow
  - name: a reader may terminate (wrong on purpose)
    principal: {subject: rob, roles: [reader]}
    action: workflow.terminate
    resource: {workflow_id: x}
    expect: allow
"""


def _immortal(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env_args = ["--token", token] if token else []
    return subprocess.run(
        [sys.executable, "-m", "immortal_hub", *env_args, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


async def _cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_immortal, *args, token=token)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(tmp_path) as s:
        hub = Hub(s.url, security=s.hub_security())
        await hub.start()
        worker = Worker(
            s.url,
            workflows=[three_step, pay],
            activities=[double, square, add],
            security=s.security("svc-worker", ["acme:worker"], queues=["default"]),
        )
        await worker.start()
        try:
            yield s
        finally:
            await worker.stop()
            await hub.stop()


def test_policy_test_exits_1_naming_the_failing_case(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "cases.yaml").write_text(CASES)
    done = _immortal("policy", "test", str(tmp_path / "cases.yaml"))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ok    a writer starts" and lines[1] == "ok    support reads"
    assert lines[2].startswith("FAIL  a reader may terminate (wrong on purpose) (")
    assert "expected allow, got deny" in lines[3]
    assert lines[-1] == "3 cases against policy v3: 1 failed"
    fixed = CASES.replace("expect: allow\n", "expect: deny\n").replace(
        "expect: deny\n", "expect: allow\n", 2
    )
    (tmp_path / "cases.yaml").write_text(fixed)
    for engine in ("builtin", "cedar"):
        done = _immortal("policy", "test", str(tmp_path / "cases.yaml"), "--engine", engine)
        assert done.returncode == 0 and done.stdout.splitlines()[-1].endswith("all passed")


def test_policy_explain_offline_prints_the_decision_and_the_rules_considered(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    done = _immortal(
        "policy", "explain", "--policy", str(tmp_path / "policy.yaml"),
        "--principal", "{subject: ann, roles: [writer]}", "--action", "workflow.start",
        "--resource", "workflow_type:pay", "--input", '{"amount": 500}',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("denied: ") and "(rule r-small-only, policy v3)" in first
    assert any("r-writers" in line and "applies" in line for line in rest)
    bad = _immortal(
        "policy", "explain", "--policy", str(tmp_path / "policy.yaml"),
        "--principal", "ann", "--action", "workflow.strat", "--resource", "workflow:x",
    )  # fmt: skip
    assert bad.returncode == 1 and "workflow.strat" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


async def test_apply_show_explain_and_audit_as_a_user(stack: SecureStack, tmp_path: Path) -> None:
    url = stack.url
    admin = stack.idp.token("root", ["acme:admin"])
    writer = stack.idp.token("ann", ["acme:writer"])
    reader = stack.idp.token("rita", ["acme:reader"])
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "typo.yaml").write_text(POLICY.replace("workflow.*]", "workflow.strat]"))

    done = await _cli("policy", "apply", str(tmp_path / "typo.yaml"), "-s", url, token=admin)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'typo.yaml'}:9: rule r-writers: actions: unknown action "
        "'workflow.strat' (did you mean 'workflow.start'?)"
    )
    done = await _cli("policy", "apply", str(tmp_path / "policy.yaml"), "-s", url, token=writer)
    assert done.returncode == 2 and "not permitted" in done.stderr.splitlines()[-1]
    done = await _cli("policy", "show", "-s", url, token=admin)
    assert done.stdout.startswith("none: tenant 'acme' has no policy")

    done = await _cli("policy", "apply", str(tmp_path / "policy.yaml"), "-s", url, token=admin)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied policy v3 of tenant acme: 4 rules, 1 relation tuples")
    again = await _cli("policy", "apply", str(tmp_path / "policy.yaml"), "-s", url, token=admin)
    assert again.returncode == 1 and "not newer than the stored policy's (v3)" in again.stderr
    shown = await _cli("policy", "show", "-s", url, token=reader)
    assert "r-small-only" in shown.stdout and "user:rita member team:support" in shown.stdout

    explained = await _cli(
        "policy", "explain", "--as", writer, "--action", "workflow.start",
        "--resource", "workflow_type:pay", "--input", '{"amount": 500}', "-s", url, token=reader,
    )  # fmt: skip
    assert explained.stdout.splitlines()[0].startswith("denied: ")
    assert "user ann" in explained.stdout or "role writer" in explained.stdout

    await asyncio.sleep(0.2)  # the hub's watch (it takes milliseconds)
    big = await _cli(
        "workflow", "start", "pay", '{"amount": 500}', "--id", "big", "-s", url, token=writer
    )
    assert big.returncode == 2
    assert big.stderr.strip().splitlines()[-1].startswith("error: denied: ")
    assert "r-small-only" in big.stderr
    small = await _cli(
        "workflow",
        "start",
        "pay",
        '{"amount": 5}',
        "--id",
        "small",
        "--wait",
        "-s",
        url,
        token=writer,
    )
    assert small.returncode == 0, small.stderr

    denied = await _cli("audit", "--decision", "deny", "--json", "-s", url, token=admin)
    records = [json.loads(line) for line in denied.stdout.splitlines()]
    assert [(r["action"], r["principal"]["subject"], r["rule_ids"]) for r in records] == [
        ("workflow.start", "ann", ["r-small-only"])
    ]
    assert records[0]["resource"]["workflow_id"] == "big" and len(records[0]["input_digest"]) == 64
    by_ann = await _cli("audit", "--principal", "ann", "-s", url, token=admin)
    lines = by_ann.stdout.splitlines()
    assert lines[0].split() == ["seq", "time", "(UTC)", "decision", "action", "principal", "reason"]
    assert any(" deny " in line and "workflow.start" in line for line in lines[1:])
    assert any(" allow " in line and "workflow.start" in line for line in lines[1:])
    refused = await _cli("audit", "-s", url, token=reader)
    assert refused.returncode == 2 and "no rule allows admin.audit" in refused.stderr


async def test_audit_follow_prints_decisions_as_they_are_taken(stack: SecureStack) -> None:
    admin = stack.idp.token("root", ["acme:admin"])
    async with Client(stack.url, security=stack.security("root", ["acme:admin"])) as client:
        from immortal._transient import key_value
        from immortal.policy import parse_policy, write_policy

        kv = await key_value(client.nc.jetstream(), "imm-policy")
        await write_policy(kv, parse_policy(POLICY))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "immortal_hub", "--token", admin, "audit", "--follow",
        "--decision", "deny", "-s", stack.url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        await asyncio.sleep(1.0)  # following (whatever it printed first is not a deny)
        writer = stack.security("ann", ["acme:writer"])
        async with Client(stack.url, security=writer) as ann:
            await asyncio.sleep(0.2)
            with pytest.raises(Exception, match="r-small-only"):
                await ann.start(pay, {"amount": 1000}, id="live-1")
        async with asyncio.timeout(20):
            header = (await proc.stdout.readline()).decode()
            line = (await proc.stdout.readline()).decode()
        assert header.split()[0] == "seq"
        assert " deny " in line and "workflow.start" in line and "workflow_id=live-1" in line
    finally:
        proc.terminate()
        await proc.wait()
