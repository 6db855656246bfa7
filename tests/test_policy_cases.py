"""tests/policy_cases.yaml, the same cases with both engines, and `policy test` itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from immortal.policy import (
    ENGINE_NAMES,
    CaseSuite,
    PolicyError,
    load_cases,
    make_engine,
    run_cases,
)

CASES = Path(__file__).parent / "policy_cases.yaml"
SUITE = load_cases(CASES)
assert SUITE.policy is not None


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@pytest.mark.parametrize("index", range(len(SUITE.cases)), ids=[c.name for c in SUITE.cases])
def test_case(engine: str, index: int) -> None:
    assert SUITE.policy is not None
    one = CaseSuite(
        source=SUITE.source,
        policy=SUITE.policy,
        cases=SUITE.cases[index : index + 1],
        lines=(None,),
    )
    report = run_cases(one, make_engine(SUITE.policy, engine), tenant=SUITE.policy.tenant)
    assert report.ok, str(report)


def test_the_case_file_covers_every_model() -> None:
    # The cases above are what the issue asks for; keep them from quietly shrinking.
    assert SUITE.policy is not None
    by_id = {r.id: r for r in SUITE.policy.rules}
    deciding = {rule for case in SUITE.cases for rule in case.rules or ()}
    kinds = {
        by_id[r].effect
        + ":"
        + ("rebac" if by_id[r].relation else "abac" if by_id[r].when else "rbac")
        for r in deciding
    }
    assert kinds >= {"allow:rbac", "allow:rebac", "allow:abac", "deny:abac", "deny:rbac"}
    assert any(c.time for c in SUITE.cases if c.expect == "allow")
    assert any(c.principal.groups for c in SUITE.cases if c.expect == "allow")
    assert sum(1 for c in SUITE.cases if c.expect == "deny" and c.rules == ()) >= 5


def test_report_names_failures_with_their_lines(tmp_path: Path) -> None:
    (tmp_path / "cases.yaml").write_text(
        f"policy: {SUITE.policy and CASES.parent / 'fixtures/policy/acme.yaml'}\n"
        "cases:\n"
        "  - name: right\n"
        "    principal: {subject: ann, roles: [writer]}\n"
        "    action: workflow.start\n"
        "    resource: {workflow_type: refund}\n"
        "    expect: allow\n"
        "  - name: wrong verdict\n"
        "    principal: {subject: ann, roles: [writer]}\n"
        "    action: workflow.start\n"
        "    resource: {workflow_type: payout}\n"
        "    expect: allow\n"
        "  - name: wrong rules and reason\n"
        "    principal: {subject: ann, roles: [writer]}\n"
        "    action: workflow.start\n"
        "    resource: {workflow_type: refund}\n"
        "    expect: allow\n"
        "    rules: [r-readers]\n"
        "    reason: by magic\n"
    )
    suite = load_cases(tmp_path / "cases.yaml")
    assert suite.policy is not None
    report = run_cases(suite, make_engine(suite.policy), tenant="acme")
    assert not report.ok
    assert [r.case.name for r in report.failures] == ["wrong verdict", "wrong rules and reason"]
    text = str(report)
    assert f"FAIL  wrong verdict ({tmp_path / 'cases.yaml'}:8)" in text
    assert "expected allow, got deny: denied: no rule allows workflow.start for user ann" in text
    assert "expected rules r-readers, got r-writers-start" in text
    assert "expected the reason to say 'by magic'" in text
    assert text.splitlines()[0] == "ok    right"
    assert text.splitlines()[-1] == "3 cases against policy v7: 2 failed"


def test_a_case_file_with_an_inline_policy_and_a_bad_case(tmp_path: Path) -> None:
    path = tmp_path / "cases.yaml"
    path.write_text(
        "policy:\n"
        "  tenant: acme\n"
        "  version: 1\n"
        "  rules:\n"
        "    - id: r1\n"
        "      effect: allow\n"
        "      actions: [workflow.read]\n"
        "cases:\n"
        "  - name: reads\n"
        "    principal: {subject: ann}\n"
        "    action: workflow.read\n"
        "    expect: allow\n"
        "  - name: typo\n"
        "    principal: {subject: ann}\n"
        "    action: workflow.raed\n"
        "    expect: allow\n"
    )
    with pytest.raises(PolicyError) as err:
        load_cases(path)
    assert str(err.value) == (
        f"{path}:15: case 'typo': action: unknown action 'workflow.raed' (did you mean 'workflow.read'?)"
    )
    path.write_text(path.read_text().replace("raed", "read").replace("version: 1", "version: 0"))
    with pytest.raises(PolicyError) as err:
        load_cases(path)
    assert str(err.value) == f"{path}:3: version: input should be greater than or equal to 1"
