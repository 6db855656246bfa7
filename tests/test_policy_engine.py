"""The engines' behaviour beyond the shared cases: caching, explanations, both engines
agreeing on generated requests, Cedar's translation, and the text tools print."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import immortal.policy
from immortal.policy import (
    ACTIONS,
    BuiltinEngine,
    CedarEngine,
    Context,
    PolicyEngine,
    PolicyError,
    PolicyPrincipal,
    Resource,
    load_cases,
    load_policy,
    parse_input,
    parse_policy,
    parse_principal,
    parse_resource,
    render_explanation,
    render_policy,
)

ACME = load_policy(Path(__file__).parent / "fixtures" / "policy" / "acme.yaml")
CASES = load_cases(Path(__file__).parent / "policy_cases.yaml")


def _p(
    subject: str, *roles: str, groups: tuple[str, ...] = (), **attributes: Any
) -> PolicyPrincipal:
    return PolicyPrincipal(
        subject=subject, tenant="acme", roles=roles, groups=groups, attributes=attributes
    )


def _r(**fields: Any) -> Resource:
    return Resource(tenant="acme", **fields)


def test_public_api_is_pinned() -> None:
    assert sorted(immortal.policy.__all__) == [
        "ACTIONS", "BuiltinEngine", "Case", "CaseReport", "CaseResult", "CaseSuite", "CedarEngine", "Context",
        "Decision", "ENGINE_NAMES", "Explanation", "PolicyDocument", "PolicyEngine", "PolicyError",
        "PolicyPrincipal", "PrincipalLike", "Resource", "Rule", "RuleTrace", "StoredPolicy", "expand_actions",
        "load_cases", "load_policy", "make_engine", "parse_input", "parse_policy", "parse_principal",
        "parse_resource", "policy_key", "read_policy", "reads_every_run", "render_explanation", "render_policy", "run_cases",
        "write_policy",
    ]  # fmt: skip
    for engine in (BuiltinEngine(ACME), CedarEngine(ACME)):
        assert isinstance(engine, PolicyEngine)


# -- caching ---------------------------------------------------------------------------


def test_a_decision_from_claims_alone_is_cached() -> None:
    engine = BuiltinEngine(ACME)
    rita, queue = _p("rita", "reader"), _r(queue="payments")
    first = engine.decide(rita, "logs.read", queue)
    assert first.allow
    assert engine.decide(_p("rita", "reader"), "logs.read", _r(queue="payments")) is first
    assert len(engine.cache) == 1
    # anything in the key that differs is another entry, decided afresh
    assert not engine.decide(_p("rita", "x"), "logs.read", queue).allow
    assert engine.decide(_p("bob"), "logs.read", queue).rule_ids == ("r-queue-managers",)
    assert not engine.decide(_p("bob"), "logs.read", _r(queue="hr")).allow
    assert not engine.decide(rita, "workflow.cancel", queue).allow
    assert len(engine.cache) == 5


def test_a_decision_that_read_the_input_or_the_time_is_not_cached() -> None:
    engine = BuiltinEngine(ACME)
    clerk, refund = _p("carl", "clerk"), "refund"
    assert engine.decide(
        clerk, "workflow.start", _r(workflow_type=refund, input={"amount": 10})
    ).allow
    assert not engine.decide(
        clerk, "workflow.start", _r(workflow_type=refund, input={"amount": 10**6})
    ).allow
    otto, run = _p("otto", "operator"), _r(workflow_id="w", status="running")
    day = Context(time=datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
    night = Context(time=datetime(2026, 12, 1, 23, 30, tzinfo=UTC))
    assert engine.decide(otto, "workflow.terminate", run, day).allow
    assert not engine.decide(otto, "workflow.terminate", run, night).allow
    assert len(engine.cache) == 0
    # A writer's start reaches r-finance-small, which reads the input (and would add its id
    # to the decision): not cached either. No rule for logs.read reads input: cached.
    engine.decide(
        _p("ann", "writer"), "workflow.start", _r(workflow_type=refund, input={"amount": 1})
    )
    assert len(engine.cache) == 0
    read = engine.decide(_p("rita", "reader"), "logs.read", _r(queue="q", input={"amount": 1}))
    assert (
        engine.decide(_p("rita", "reader"), "logs.read", _r(queue="q", input={"amount": 2})) is read
    )


def test_attributes_are_part_of_the_key_when_a_rule_reads_them() -> None:
    doc = parse_policy(
        "tenant: acme\nversion: 1\nrules:\n"
        "  - {id: r-fin, effect: allow, actions: [workflow.read], when: principal.attributes.dept == 'fin'}\n"
        "  - {id: r-vip, effect: allow, actions: [logs.read], when: resource.attributes.vip == true}\n"
    )
    engine = BuiltinEngine(doc)
    assert engine.decide(_p("fay", dept="fin"), "workflow.read", _r()).allow
    assert not engine.decide(_p("fay", dept="hr"), "workflow.read", _r()).allow
    vip = Resource(tenant="acme", queue="q", attributes={"vip": True})
    plain = Resource(tenant="acme", queue="q", attributes={"vip": False})
    assert engine.decide(_p("fay"), "logs.read", vip).allow
    assert not engine.decide(_p("fay"), "logs.read", plain).allow
    assert len(engine.cache) == 4


def test_the_cache_is_bounded_and_drops_its_oldest_entry() -> None:
    engine = BuiltinEngine(ACME, cache_size=2)
    read = [engine.decide(_p(f"u{i}", "reader"), "logs.read", _r(queue="q")) for i in range(3)]
    assert len(engine.cache) == 2
    assert engine.decide(_p("u2", "reader"), "logs.read", _r(queue="q")) is read[2]
    again = engine.decide(_p("u0", "reader"), "logs.read", _r(queue="q"))
    assert again == read[0] and again is not read[0]  # decided afresh, the same answer


def test_a_new_version_is_a_new_engine_with_its_own_answers() -> None:
    v7 = BuiltinEngine(ACME)
    ann = _p("ann", "writer")
    assert v7.decide(ann, "workflow.start", _r(workflow_type="refund")).allow
    rules = [r for r in ACME.rules if r.id != "r-writers-start"]
    v8 = BuiltinEngine(ACME.model_copy(update={"version": 8, "rules": tuple(rules)}))
    decision = v8.decide(ann, "workflow.start", _r(workflow_type="refund"))
    assert (decision.allow, decision.policy_version) == (False, 8)


# -- the checks before any rule --------------------------------------------------------


@pytest.mark.parametrize("engine", [BuiltinEngine, CedarEngine])
def test_tenants_and_actions_are_checked_first(
    engine: type[BuiltinEngine] | type[CedarEngine],
) -> None:
    e = engine(ACME)
    admin = _p("adam", "admin")
    other = Resource(tenant="beta", workflow_id="x")
    assert e.decide(admin, "workflow.read", other).reason == (
        "denied: the policy of tenant acme does not cover tenant beta (policy v7)"
    )
    with pytest.raises(PolicyError, match=r"unknown action 'workflow\.launch' \(did you mean"):
        e.decide(admin, "workflow.launch", _r())


@dataclass(frozen=True)
class _VerifiedPrincipal:
    """Shaped like the identity layer's Principal: more fields than a policy reads."""

    subject: str
    tenant: str
    roles: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    token_id: str = "jti-1"
    issuer: str = "https://idp.example"


@pytest.mark.parametrize("engine", [BuiltinEngine, CedarEngine])
def test_any_object_with_the_claims_is_a_principal(
    engine: type[BuiltinEngine] | type[CedarEngine],
) -> None:
    bob = _VerifiedPrincipal(subject="erin", tenant="acme", groups=("team:ops",))
    decision = engine(ACME).decide(bob, "workflow.cancel", _r(workflow_id="w1", queue="payments"))
    assert decision.allow and decision.rule_ids == ("r-queue-managers",)


# -- explain ---------------------------------------------------------------------------


def test_explain_lists_every_rule_covering_the_action() -> None:
    clerk = _p("carl", "clerk")
    explanation = BuiltinEngine(ACME).explain(
        clerk, "workflow.start", _r(workflow_type="refund", input={"amount": 12_000})
    )
    assert explanation.decision.reason == (
        "denied: input.amount 12,000 exceeds the 10,000 limit for role clerk (rule r-clerk-limit, policy v7)"
    )
    assert [(t.rule_id, t.applies, t.detail) for t in explanation.considered] == [
        ("r-writers-start", False, "needs role writer"),
        ("r-admins", False, "needs role admin"),
        ("r-queue-managers", False, "no relation 'resource.queue managed-by principal' links the resource to user carl"),
        ("r-clerk-start", False, "condition 'input.amount <= 10000' is false: input.amount 12,000 exceeds the 10,000 limit"),
        ("r-clerk-limit", True, "role clerk; input.amount 12,000 exceeds the 10,000 limit"),
        ("r-finance-small", False, "condition 'principal.attributes.department == \"finance\" and input.amount <= 500' has no value: principal.attributes.department is missing"),
        ("r-suspended", False, "needs membership of group suspended"),
    ]  # fmt: skip
    text = render_explanation(explanation)
    assert text.splitlines()[:3] == [
        explanation.decision.reason,
        "facts: principal.role = clerk, input.amount = 12,000",
        "rules covering workflow.start: 7 of 13",
    ]
    assert (
        "  r-clerk-limit     deny   rbac+abac  applies  role clerk; input.amount 12,000 exceeds"
        in text
    )


def test_explain_of_a_refusal_before_any_rule() -> None:
    stranger = PolicyPrincipal(subject="ann", tenant="beta")
    explanation = BuiltinEngine(ACME).explain(stranger, "workflow.read", _r(workflow_id="x"))
    assert explanation.considered == ()
    assert render_explanation(explanation).splitlines() == [
        "denied: principal of tenant beta may not act in tenant acme (policy v7)",
        "facts: principal.tenant = beta, resource.tenant = acme",
        "rules considered for workflow.read: none (no rule was looked at)",
    ]


def test_explain_decides_as_decide_does_for_every_case() -> None:
    # explain looks at every rule of the action, decide only at the indexed candidates
    for case in CASES.cases:
        principal, resource, context = case.request("acme")
        decided = BuiltinEngine(ACME).decide(principal, case.action, resource, context)
        assert (
            BuiltinEngine(ACME).explain(principal, case.action, resource, context).decision
            == decided
        )


# -- both engines on generated requests ------------------------------------------------

_SUBJECTS = [
    "ann",
    "bob",
    "carl",
    "erin",
    "fay",
    "adam",
    "otto",
    "team:support",
    "team:ops",
    "team:eng",
]
_SEALED = "the input is encrypted and the hub holds no key"
_TIMES = [datetime(2026, 12, d, h, 0, tzinfo=UTC) for d in (1, 5) for h in (3, 8, 9, 16, 17, 22)]
principals = st.builds(
    PolicyPrincipal,
    subject=st.sampled_from(_SUBJECTS),
    tenant=st.just("acme"),
    roles=st.lists(st.sampled_from(["clerk", "operator", "writer", "reader", "admin", "worker", "x"]), max_size=3).map(tuple),
    groups=st.lists(st.sampled_from(["team:ops", "team:eng", "suspended", "ops"]), max_size=2).map(tuple),
    attributes=st.sampled_from([{}, {"department": "finance"}, {"department": "hr"}]),
)  # fmt: skip
resources = st.builds(
    Resource,
    tenant=st.just("acme"),
    queue=st.sampled_from([None, "payments", "payments-eu", "hr"]),
    workflow_type=st.sampled_from([None, "refund", "refund-eu", "payout"]),
    workflow_id=st.sampled_from([None, "order-42", "order-77", "order-50"]),
    status=st.sampled_from([None, "running", "completed"]),
    input=st.one_of(  # boundaries first: hypothesis favours the front of a list
        st.builds(lambda a: {"amount": a}, st.sampled_from([10_000, 10_001, 500, 501, 9_999, 12_000, 300, 0, -5])),
        st.none(),
        st.just({"currency": "EUR"}),
    ),
    input_unreadable=st.sampled_from([None, None, _SEALED]),
)  # fmt: skip
BUILTIN, CEDAR = BuiltinEngine(ACME), CedarEngine(ACME)


# The actions the policy has rules for come up more often than the rest.
_ACTIONS = st.one_of(
    st.sampled_from(ACTIONS),
    st.sampled_from(["workflow.start", "workflow.terminate", "workflow.signal"]),
)


@settings(max_examples=1000, deadline=None)
@given(principal=principals, action=_ACTIONS, resource=resources, time=st.sampled_from(_TIMES))
def test_both_engines_decide_alike(
    principal: PolicyPrincipal, action: str, resource: Resource, time: datetime
) -> None:
    context = Context(time=time)
    ours, cedars = (
        BUILTIN.decide(principal, action, resource, context),
        CEDAR.decide(principal, action, resource, context),
    )
    assert (ours.allow, ours.rule_ids) == (cedars.allow, cedars.rule_ids)
    if ours.rule_ids:  # the same rules decided: the same sentence
        assert ours.reason == cedars.reason


@pytest.mark.parametrize("engine", [BUILTIN, CEDAR], ids=["builtin", "cedar"])
def test_a_rule_reading_an_unreadable_input_refuses_in_both_engines(engine: Any) -> None:
    clerk, writer = _p("carl", "clerk"), _p("wendy", "writer")
    sealed = _r(workflow_type="refund", input={}, input_unreadable=_SEALED)
    # The deny rule on input.amount cannot be skipped as if the field were missing.
    denied = engine.decide(clerk, "workflow.start", sealed)
    assert not denied.allow
    assert denied.rule_ids == ("r-clerk-limit",)
    assert denied.reason == (
        "denied: rule r-clerk-limit reads input.amount, but the input is encrypted and the "
        "hub holds no key (policy v7)"
    )
    assert denied.facts == {"input.unreadable": _SEALED, "input.fields": ["input.amount"]}
    # A request no rule on the input covers is decided as before.
    assert engine.decide(writer, "workflow.start", sealed).allow
    # Readable, the same request is decided on its amount.
    small = _r(workflow_type="refund", input={"amount": 900})
    assert engine.decide(clerk, "workflow.start", small).allow
    # An input that is not a mapping offers input.args only.
    args = _r(workflow_type="refund", input={"args": [12_000]}, input_unreadable="not a map")
    assert (
        "reads input.amount, but not a map" in engine.decide(clerk, "workflow.start", args).reason
    )


def test_explain_says_which_rule_read_an_unreadable_input() -> None:
    sealed = _r(workflow_type="refund", input={}, input_unreadable=_SEALED)
    explained = BUILTIN.explain(_p("carl", "clerk"), "workflow.start", sealed)
    assert explained.decision.rule_ids == ("r-clerk-limit",)
    limit = next(t for t in explained.considered if t.rule_id == "r-clerk-limit")
    assert not limit.applies
    assert f"has no value: input.amount cannot be read: {_SEALED}" in limit.detail


# -- Cedar specifics -------------------------------------------------------------------


def test_the_cedar_translation_keeps_rule_ids() -> None:
    text = CedarEngine(ACME).policies_text
    assert text.count("@id(") == len(ACME.rules)
    assert (
        '@id("r-clerk-limit")\nforbid (principal, action in [Action::"workflow.start"], resource)\n'
        'when { context.principal.roles.containsAny(["clerk"]) && (context.input["amount"] > 10000) };'
    ) in text
    reached = 'context.facets.queue["path:r-queue-managers"]'
    assert f"&& (principal in {reached} || context.claimed.containsAny({reached})))" in text


def test_cedar_takes_whole_numbers_only() -> None:
    fractional = parse_policy(
        "tenant: acme\nversion: 1\nrules:\n  - {id: r-half, effect: allow, actions: ['*'], when: input.x > 0.5}\n"
    )
    with pytest.raises(
        PolicyError,
        match=r"rule r-half: Cedar has no fractional numbers, and the condition uses 0.5",
    ):
        CedarEngine(fractional)
    assert BuiltinEngine(fractional).decide(_p("a"), "workflow.read", _r(input={"x": 1})).allow
    # A fractional value in a request is left out of what Cedar sees, and the decision says so.
    clerk = _p("carl", "clerk")
    start = _r(workflow_type="refund", input={"amount": 9_000.5, "whole": 3.0})
    decision = CedarEngine(ACME).decide(clerk, "workflow.start", start)
    assert not decision.allow
    assert decision.facts["cedar.omitted"] == ["input.amount"]
    assert BuiltinEngine(ACME).decide(clerk, "workflow.start", start).allow


def test_names_with_quotes_and_backslashes_mean_the_same_to_both_engines() -> None:
    doc = parse_policy(
        "tenant: acme\nversion: 1\n"
        "relations:\n  - ['user:o\"k', owner, 'workflow:a\\b\"c']\n"
        "rules:\n"
        "  - {id: r-odd, effect: allow, actions: [workflow.start], resources: {workflow_type: 'say \"hi\\*'}}\n"
        "  - {id: r-own, effect: allow, actions: [workflow.read], relation: principal owner resource.workflow}\n"
    )
    for engine in (BuiltinEngine(doc), CedarEngine(doc)):
        assert engine.decide(_p("x"), "workflow.start", _r(workflow_type='say "hi\\ there')).allow
        assert not engine.decide(_p("x"), "workflow.start", _r(workflow_type="say hi")).allow
        assert engine.decide(_p('o"k'), "workflow.read", _r(workflow_id='a\\b"c')).allow


# -- text for people -------------------------------------------------------------------


def test_render_policy() -> None:
    text = render_policy(ACME, tuples=2)
    lines = text.splitlines()
    assert (
        lines[0]
        == "policy of tenant acme, version 7 (times in Europe/Paris): 13 rules, 6 relation tuples"
    )
    assert lines[1] == "Refunds and payments at Acme"
    assert any(
        line.split()
        == [
            "r-clerk-limit",
            "deny",
            "rbac+abac",
            "workflow.start",
            "roles",
            "clerk;",
            "when",
            "input.amount",
            ">",
            "10000",
        ]
        for line in lines
    )
    assert "relations: managed-by (1), member (2), owned-by (1), owner (1), part-of (1)" in lines
    assert lines[-3:] == [
        "  user:ann owner workflow:order-42",
        "  user:bob member team:ops",
        "  ... and 4 more",
    ]


def test_specs_from_a_command_line() -> None:
    assert parse_principal("team:support", tenant="acme") == PolicyPrincipal(
        subject="team:support", tenant="acme"
    )
    assert parse_principal("{subject: ann, roles: [writer]}", tenant="acme").roles == ("writer",)
    assert parse_resource(
        "workflow:order-42,queue:payments", tenant="acme", input={"a": 1}
    ) == Resource(tenant="acme", workflow_id="order-42", queue="payments", input={"a": 1})
    assert parse_resource('{"workflow_type": "refund"}', tenant="acme").workflow_type == "refund"
    assert parse_input('{"amount": 12000}') == {"amount": 12000}
    with pytest.raises(
        PolicyError, match="resource 'run:1': write <facet>:<id>, facets workflow, queue"
    ):
        parse_resource("run:1", tenant="acme")
    with pytest.raises(
        PolicyError, match=re.escape("principal '{subject: ann, role: x}': role: Extra inputs")
    ):
        parse_principal("{subject: ann, role: x}", tenant="acme")
    with pytest.raises(PolicyError, match="input must be a JSON object"):
        parse_input("[1]")
