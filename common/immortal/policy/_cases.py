"""Policy test cases: requests with the decision they must get (``immortal policy test``).

A case file names its policy (a path relative to the file, or the document inline) and
lists cases::

    policy: acme.yaml
    cases:
      - name: a clerk may not start a refund over the limit
        principal: {subject: carl, roles: [clerk]}
        action: workflow.start
        resource: {workflow_type: refund}
        input: {amount: 12000}
        expect: deny
        rules: [r-clerk-limit]             # optional: the deciding rules, exactly
        reason: exceeds the 10,000 limit   # optional: a part of the reason

``time`` (ISO 8601) and ``context`` (attributes) set the context; tenants default to the
policy's.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from immortal.policy._actions import check_action
from immortal.policy._document import PolicyDocument
from immortal.policy._engine import PolicyEngine
from immortal.policy._errors import PolicyError
from immortal.policy._loader import Locate, read_data, validate
from immortal.policy._model import Context, Decision, PolicyPrincipal, Resource

__all__ = ["Case", "CaseReport", "CaseResult", "CaseSuite", "load_cases", "run_cases"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PrincipalSpec(_Strict):
    subject: str = Field(min_length=1)
    tenant: str | None = None
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    attributes: dict[str, Any] = Field(default_factory=dict)


class _ResourceSpec(_Strict):
    tenant: str | None = None
    queue: str | None = None
    workflow_type: str | None = None
    workflow_id: str | None = None
    activity_type: str | None = None
    schedule_id: str | None = None
    status: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


class Case(_Strict):
    """One request and the decision it must get."""

    name: str = Field(min_length=1)
    principal: _PrincipalSpec
    action: str
    resource: _ResourceSpec = _ResourceSpec()
    input: dict[str, Any] | None = None
    time: datetime | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    expect: Literal["allow", "deny"]
    rules: tuple[str, ...] | None = None
    reason: str | None = None

    @field_validator("action")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_action(value)

    def request(self, tenant: str) -> tuple[PolicyPrincipal, Resource, Context]:
        """The principal, resource and context this case asks about, in ``tenant`` unless
        the case names another."""
        p, r = self.principal, self.resource
        principal = PolicyPrincipal(
            subject=p.subject,
            tenant=p.tenant or tenant,
            roles=p.roles,
            groups=p.groups,
            attributes=p.attributes,
        )
        fields = r.model_dump(exclude={"tenant"})
        resource = Resource(tenant=r.tenant or tenant, input=self.input, **fields)
        context = (
            Context(time=self.time, attributes=self.context)
            if self.time
            else Context(attributes=self.context)
        )
        return principal, resource, context


class _CaseFile(_Strict):
    policy: str | dict[str, Any] | None = None
    cases: tuple[Case, ...] = Field(min_length=1)


class CaseSuite(BaseModel):
    """Cases read from a file, with their lines and the policy the file names (if any)."""

    model_config = ConfigDict(frozen=True)

    source: str
    policy: PolicyDocument | None
    cases: tuple[Case, ...]
    lines: tuple[int | None, ...]


class CaseResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    case: Case
    line: int | None
    decision: Decision | None
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


class CaseReport(BaseModel):
    """Every case's result; ``ok`` when all passed. ``str()`` is what ``policy test`` prints."""

    model_config = ConfigDict(frozen=True)

    source: str
    policy_version: int
    results: tuple[CaseResult, ...]

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        lines = []
        for r in self.results:
            if r.passed:
                lines.append(f"ok    {r.case.name}")
                continue
            where = f"{self.source}:{r.line}" if r.line else self.source
            lines.append(f"FAIL  {r.case.name} ({where})")
            lines += [f"        {p}" for p in r.problems]
        failed = len(self.failures)
        verdict = "all passed" if not failed else f"{failed} failed"
        lines.append(f"{len(self.results)} cases against policy v{self.policy_version}: {verdict}")
        return "\n".join(lines)


def load_cases(path: str | Path) -> CaseSuite:
    """Read a case file and the policy it names; :class:`PolicyError` at the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(f"cannot read the case file: {e.strerror}", source=str(path)) from None
    data, locate = read_data(text, source=str(path))
    suite = validate(_CaseFile, data, locate=locate, source=str(path))
    return CaseSuite(
        source=str(path),
        policy=_policy(suite.policy, path, locate),
        cases=suite.cases,
        lines=tuple(locate(("cases", i)) for i in range(len(suite.cases))),
    )


def run_cases(suite: CaseSuite, engine: PolicyEngine, *, tenant: str) -> CaseReport:
    """Ask ``engine`` every case of ``suite``; the report names each failure and why."""
    results = []
    for case, line in zip(suite.cases, suite.lines, strict=True):
        principal, resource, context = case.request(tenant)
        try:
            decision = engine.decide(principal, case.action, resource, context)
        except PolicyError as e:
            results.append(
                CaseResult(case=case, line=line, decision=None, problems=(f"error: {e}",))
            )
            continue
        results.append(
            CaseResult(case=case, line=line, decision=decision, problems=_problems(case, decision))
        )
    return CaseReport(
        source=suite.source, policy_version=engine.policy_version, results=tuple(results)
    )


def _problems(case: Case, decision: Decision) -> tuple[str, ...]:
    problems = []
    got = "allow" if decision.allow else "deny"
    if got != case.expect:
        problems.append(f"expected {case.expect}, got {got}: {decision.reason}")
    if case.rules is not None and tuple(case.rules) != decision.rule_ids:
        want = ", ".join(case.rules) or "none"
        problems.append(f"expected rules {want}, got {', '.join(decision.rule_ids) or 'none'}")
    if case.reason is not None and case.reason not in decision.reason:
        problems.append(f"expected the reason to say {case.reason!r}, it says {decision.reason!r}")
    return tuple(problems)


def _policy(spec: str | dict[str, Any] | None, path: Path, locate: Locate) -> PolicyDocument | None:
    from immortal.policy._loader import load_policy

    if spec is None:
        return None
    if isinstance(spec, str):
        return load_policy(path.parent / spec)

    def inner(loc: Any) -> int | None:
        return locate(("policy", *loc))

    return validate(PolicyDocument, spec, locate=inner, source=str(path))
