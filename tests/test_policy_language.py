"""What a policy author writes: the file format and its errors, conditions, relations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import immortal
from immortal.policy import PolicyError, load_policy, parse_policy
from immortal.policy._conditions import ConditionEnv, Undefined, parse_condition
from immortal.policy._relations import RelationGraph, parse_path

GOOD = """\
tenant: acme
version: 3
rules:
  - id: r-start
    effect: allow
    roles: [writer]
    actions: [workflow.start]
"""


def _error(text: str, source: str = "policy.yaml") -> PolicyError:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, source=source)
    return err.value


# -- the file and its errors -----------------------------------------------------------


def test_a_good_policy_loads_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(GOOD)
    doc = load_policy(tmp_path / "p.yaml")
    assert (doc.tenant, doc.version, [r.id for r in doc.rules]) == ("acme", 3, ["r-start"])
    (tmp_path / "p.json").write_text(doc.model_dump_json(indent=2))
    assert load_policy(tmp_path / "p.json") == doc


def test_errors_name_the_line_and_the_rule() -> None:
    err = _error(GOOD.replace("workflow.start", "workflow.strat"))
    assert str(err) == (
        "policy.yaml:7: rule r-start: actions: unknown action 'workflow.strat' "
        "(did you mean 'workflow.start'?)"
    )
    assert isinstance(err, immortal.ImmortalError)
    assert (err.line, err.rule) == (7, "r-start")


def test_a_misspelt_field_is_named_with_a_suggestion() -> None:
    err = _error(GOOD.replace("    effect: allow", "    efect: allow"))
    assert str(err) == "policy.yaml:4: rule r-start: missing field 'effect'"
    assert [str(e) for e in err.more] == [
        "policy.yaml:5: rule r-start: unknown field 'efect' (did you mean 'effect'?)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "    when: input.amount => 10\n",
            "policy.yaml:8: rule r-start: when: cannot read condition 'input.amount => 10' at column 14: invalid syntax",
        ),
        (
            "    when: len(input.tags) > 2\n",
            "policy.yaml:8: rule r-start: when: condition 'len(input.tags) > 2' at column 1: a function call is not allowed in a condition",
        ),
        (
            "    when: amount > 2\n",
            "policy.yaml:8: rule r-start: when: condition 'amount > 2': unknown name 'amount'; names start with principal., resource., input., context.",
        ),
        (
            "    when: resource.stauts == 'running'\n",
            "policy.yaml:8: rule r-start: when: condition \"resource.stauts == 'running'\": resource has no field 'stauts' (did you mean 'status'?)",
        ),
        (
            "    when: principal.department == 'x'\n",
            "policy.yaml:8: rule r-start: when: condition \"principal.department == 'x'\": principal has no field 'department' (fields: subject, tenant, roles, groups, attributes)",
        ),
        (
            "    relation: principal owner\n",
            "policy.yaml:8: rule r-start: relation: relation 'principal owner': write terms and relations in turn, as in 'principal owner resource.workflow' or 'resource.queue managed-by principal'",
        ),
        (
            "    relation: principal owner resource.run\n",
            "policy.yaml:8: rule r-start: relation: relation 'principal owner resource.run': no resource facet 'run' (facets: workflow, queue, workflow_type, activity_type, schedule, tenant)",
        ),
        (
            "    resources: {workflow_typ: refund}\n",
            "policy.yaml:8: rule r-start: resources: no resource field 'workflow_typ' (did you mean 'workflow_type'?)",
        ),
        (
            "    principals: [ann]\n",
            "policy.yaml:8: rule r-start: principals: 'ann' is not an entity: write type:id, as in user:ann",
        ),
        ("    effect: maybe\n", "policy.yaml:8: key 'effect' appears twice in one mapping"),
    ],
)
def test_rule_errors(change: str, expected: str) -> None:
    assert str(_error(GOOD + change)) == expected


def test_document_errors() -> None:
    assert str(_error(GOOD.replace("acme", "Acme Corp"))) == (
        "policy.yaml:1: tenant: invalid tenant 'Acme Corp': use 1-63 lowercase letters, digits or "
        "dashes, starting with a letter or digit"
    )
    assert str(_error(GOOD + "timezone: Mars/Olympus\n")) == (
        "policy.yaml:8: timezone: unknown time zone 'Mars/Olympus' (use an IANA name such as UTC)"
    )
    assert str(_error(GOOD + "relations:\n  - user:ann owner\n")) == (
        "policy.yaml:9: relations: 'user:ann owner' is not a relation tuple: write 'left relation "
        "right', as in 'user:ann owner workflow:order-42'"
    )
    assert str(_error(GOOD + "relations:\n  - User:ann owner workflow:x\n")) == (
        "policy.yaml:9: relations: 'User:ann': entity types are lowercase words (letters, digits, _), "
        "not 'User'"
    )
    assert str(_error(GOOD + "  - id: r-start\n    effect: deny\n    actions: ['*']\n")) == (
        "policy.yaml:8: rule r-start: rule id 'r-start' is used twice (first at line 4)"
    )
    assert (
        str(_error("- just\n- a list\n"))
        == "policy.yaml: expected a mapping at the top, found a list"
    )
    assert str(_error("tenant: acme\nversion: [1\n")) == (
        "policy.yaml:3: not valid YAML: expected ',' or ']', but got '<stream end>'"
    )
    assert str(_error('{"tenant": "acme",\n "version": }', source="p.json")) == (
        "p.json:2: not valid JSON: Expecting value"
    )
    assert str(
        _error('{"tenant": "acme",\n "version": 1,\n "rules": [{"id": "x"}]}', source="p.json")
    ) == ("p.json:3: rule x: missing field 'effect'")


def test_a_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"p\.yaml: cannot read the policy file: No such file"):
        load_policy(tmp_path / "p.yaml")


def test_member_of_is_member_and_tuples_normalise() -> None:
    doc = parse_policy(
        GOOD
        + "relations:\n  - user:bob member-of team:ops\n  - [user:ann, owner, 'workflow:a b']\n"
    )
    assert doc.relations == (
        ("user:bob", "member", "team:ops"),
        ("user:ann", "owner", "workflow:a b"),
    )


# -- conditions ------------------------------------------------------------------------


def _env(input: Any = None, **attrs: Any) -> ConditionEnv:
    principal = SimpleNamespace(
        subject="ann", tenant="acme", roles=("clerk",), groups=("ops",), attributes=attrs
    )
    resource = SimpleNamespace(status="running", queue="payments", input=input, attributes={})
    return ConditionEnv(principal, resource, lambda: {"hour": 10, "weekday": "tue"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("input.amount <= 10_000", True),
        ("9 <= context.hour < 18", True),
        ("9 <= context.hour < 10", False),
        ("context.weekday not in ['sat', 'sun']", True),
        ("'ops' in principal.groups and 'clerk' in principal.roles", True),
        ("not (input.amount > 5)", False),
        ("input.amount > 1000 or resource.status == 'running'", True),
        ("input['first-name'] == 'Ann'", True),
        ("input.vip == true", False),
        ("input.count == 1", True),
        ("input.flag == 1", False),  # true is not 1
        ("input.tags == ['b', 'a']", True),  # lists compare as sets
        ("principal.attributes.level >= 3", True),
        ("resource.queue != 'hr'", True),
    ],
)
def test_conditions(text: str, value: bool) -> None:
    env = _env(
        {
            "amount": 9_500,
            "first-name": "Ann",
            "vip": False,
            "count": 1,
            "flag": True,
            "tags": ["a", "b"],
        },
        level=3,
    )
    assert parse_condition(text).holds(env) is value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not (input.amount > 5)", "input.amount is missing"),
        ("input.name < 5", "input.name 'x' is not a number"),
        ("input.name in 'xyz'", "'xyz' is not a list"),
        ("input.nothing == 1", "input.nothing is missing"),  # null counts as missing
        ("principal.attributes.level > 1", "principal.attributes.level is missing"),
    ],
)
def test_a_missing_name_leaves_the_condition_without_a_value(text: str, why: str) -> None:
    condition = parse_condition(text)
    env = _env({"name": "x", "nothing": None})
    with pytest.raises(Undefined, match=why):
        condition.holds(env)
    assert condition.explain(env) == (None, [why], {"input.name": "x"} if "name" in text else {})


def test_no_python_is_run() -> None:
    for text in [
        "__import__('os').system('true')",
        "(lambda: 1)()",
        "[x for x in input]",
        "input.a + 1 > 2",
    ]:
        with pytest.raises(ValueError, match="is not allowed in a condition"):
            parse_condition(text)
    # names are keys looked up in mappings, never attributes of Python objects
    with pytest.raises(Undefined, match=r"input\.__class__ is missing"):
        parse_condition("input.__class__ == 1").holds(_env({}))


def test_explanations_read_like_sentences() -> None:
    env = _env({"amount": 12_000})
    assert parse_condition("input.amount > 10000").explain(env) == (
        True,
        ["input.amount 12,000 exceeds the 10,000 limit"],
        {"input.amount": 12_000},
    )
    assert parse_condition("input.amount <= 10000").explain(env)[1] == [
        "input.amount 12,000 exceeds the 10,000 limit"
    ]
    assert parse_condition("10000 >= input.amount").explain(env)[1] == [
        "input.amount 12,000 exceeds the 10,000 limit"
    ]
    assert parse_condition("resource.status == 'done'").explain(env)[1] == [
        "resource.status is 'running', not 'done'"
    ]
    assert parse_condition("'ops' in principal.groups").explain(env)[1] == [
        "principal.groups includes 'ops'"
    ]
    # an "and" that fails says which part failed; an "or" that holds says which part held
    assert parse_condition("context.hour > 8 and input.amount < 100").explain(env)[1] == [
        "input.amount 12,000 is at or above 100"
    ]
    assert parse_condition("context.hour > 20 or input.amount > 100").explain(env)[1] == [
        "input.amount 12,000 exceeds the 100 limit"
    ]


def test_what_a_condition_reads_decides_whether_it_can_be_cached() -> None:
    assert parse_condition("input.amount > 1").volatile
    assert parse_condition("context.hour > 1").volatile
    assert not parse_condition("resource.status == 'running'").volatile
    assert parse_condition("principal.attributes.x == 1").reads_attributes == {"principal"}


# -- relations -------------------------------------------------------------------------


def test_groups_close_transitively_even_through_a_cycle() -> None:
    graph = RelationGraph(
        [
            ("user:bob", "member", "team:ops"),
            ("team:ops", "member", "team:eng"),
            ("team:eng", "member", "team:ops"),
            ("team:eng", "member", "org:acme"),
        ]
    )
    assert graph.ancestors("user:bob") == {"team:ops", "team:eng", "org:acme"}
    assert graph.ancestors("team:ops") == {"team:eng", "org:acme"}
    assert graph.principal_set("user:eve", ["group:x"]) == {"user:eve", "group:x"}
    assert graph.membership("user:bob", [], "org:acme") == [
        ("user:bob", "member", "team:ops"),
        ("team:ops", "member", "team:eng"),
        ("team:eng", "member", "org:acme"),
    ]


def test_a_path_walks_from_the_resource_either_way() -> None:
    graph = RelationGraph(
        [
            ("workflow:w1", "part-of", "project:p"),
            ("project:p", "owned-by", "team:eng"),
            ("workflow:w1", "part-of", "folder:f"),
            ("folder:f", "owned-by", "team:hr"),
            ("user:ann", "owner", "workflow:w1"),
        ]
    )
    typed = parse_path("resource.workflow part-of project owned-by principal")
    assert graph.reach(typed, "workflow:w1") == {"team:eng"}  # the folder is not a project
    assert graph.reach(
        parse_path("resource.workflow part-of * owned-by principal"), "workflow:w1"
    ) == {
        "team:eng",
        "team:hr",
    }
    assert graph.reach(parse_path("principal owner resource.workflow"), "workflow:w1") == {
        "user:ann"
    }
    assert graph.witness(typed, "workflow:w1", frozenset({"team:eng"})) == [
        ("workflow:w1", "part-of", "project:p"),
        ("project:p", "owned-by", "team:eng"),
    ]
