"""Decisions written as sentences a person understands, from the rules that decided.

Both engines use these: the built-in engine for its own decisions, the Cedar adapter for
the rules Cedar names as deciding. Only the sentence is written here, never the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from immortal.policy._actions import VERBS
from immortal.policy._compile import CompiledRule, RequestFacts
from immortal.policy._model import Decision, Resource

__all__ = [
    "Story", "allowed", "denied_by_default", "denied_by_rules", "denied_unreadable",
    "describe_entity", "rule_story", "unread_fields",
]  # fmt: skip


@dataclass(slots=True)
class Story:
    """What about a request made a rule apply (or would have)."""

    who: str  # "role clerk", "user bob", "" for a rule that names no one
    who_long: str  # the same in an allow: "role writer of tenant acme", "anyone in ..."
    tuples: list[str] = field(default_factory=list)  # relation tuples walked, as written
    conditions: list[str] = field(default_factory=list)  # the condition's phrases
    facts: dict[str, Any] = field(default_factory=dict)  # the values read


def allowed(rules: list[CompiledRule], req: RequestFacts, action: str) -> Decision:
    """Allowed by ``rules`` (document order); the first one tells the story."""
    first = rules[0]
    story = rule_story(first, req)
    act = _act(action, req.resource, first)
    sentence = f"allowed: {story.who_long} may {act}{_because(story)}"
    return _decision(True, sentence, rules, req, story)


def denied_by_rules(rules: list[CompiledRule], req: RequestFacts, action: str) -> Decision:
    """Denied by ``rules``, deny rules that applied (document order)."""
    first = rules[0]
    story = rule_story(first, req)
    if story.conditions:
        who = f" for {story.who}" if story.who else ""
        sentence = f"denied: {' and '.join(story.conditions)}{who}{_through(story)}"
    elif story.who:
        act = _act(action, req.resource, first)
        sentence = f"denied: {story.who} may not {act}{_through(story)}"
    else:
        sentence = f"denied: no one may {_act(action, req.resource, first)}"
    return _decision(False, sentence, rules, req, story)


def denied_by_default(
    req: RequestFacts, action: str, near_miss: CompiledRule | None = None
) -> Decision:
    """No rule allowed it. ``near_miss`` is an allow rule that would have, but for its
    condition; saying which condition failed is the most useful thing a denial can say."""
    target = _noun(action, req.resource, ())
    sentence = f"denied: no rule allows {action} for {_principal(req)} on {target}"
    facts: dict[str, Any] = {}
    if near_miss is not None:
        story = rule_story(near_miss, req)
        facts = story.facts
        if story.conditions:
            sentence += f"; rule {near_miss.id} would, but {' and '.join(story.conditions)}"
    return Decision(
        allow=False,
        reason=f"{sentence} (policy v{req.policy.version})",
        rule_ids=(),
        policy_version=req.policy.version,
        facts=facts,
    )


def denied_unreadable(rules: list[CompiledRule], req: RequestFacts) -> Decision:
    """Denied because ``rules`` (deny rules first, then allow rules) would decide the
    request but read input fields the request's input does not offer."""
    fields = sorted({f for rule in rules for f in unread_fields(rule, req.resource)})
    ids = [r.id for r in rules]
    many = len(ids) > 1
    sentence = (
        f"denied: rule{'s' if many else ''} {_and(ids)} read{'' if many else 's'} "
        f"{_and(fields)}, but {req.resource.input_unreadable}"
    )
    return Decision(
        allow=False,
        reason=f"{sentence} (policy v{req.policy.version})",
        rule_ids=tuple(ids),
        policy_version=req.policy.version,
        facts={"input.unreadable": req.resource.input_unreadable, "input.fields": fields},
    )


def unread_fields(rule: CompiledRule, resource: Resource) -> list[str]:
    """The input fields ``rule``'s condition reads that ``resource``'s input lacks."""
    if rule.condition is None:
        return []
    offered = resource.input or {}
    return sorted(
        p.text for p in rule.condition.paths if p.root == "input" and p.parts[0] not in offered
    )


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe_entity(entity: str) -> str:
    """``team:ops`` as a sentence says it: ``team ops``."""
    kind, _, ident = entity.partition(":")
    return f"{kind} {ident}"


def rule_story(rule: CompiledRule, req: RequestFacts) -> Story:
    """Who ``rule`` matched, the relation tuples walked, the condition's phrases and the
    facts read, for ``req``."""
    facts: dict[str, Any] = {}
    who = _who(rule, req, facts)
    if not who:
        who_long = f"anyone in tenant {req.policy.tenant}"
    elif who.startswith("role ") and "(" not in who:
        who_long = f"{who} of tenant {req.policy.tenant}"
    else:
        who_long = who
    story = Story(who=who, who_long=who_long, facts=facts)
    if rule.relation is not None:
        start = req.resource.facet(rule.relation.facet)
        walk = req.policy.graph.witness(rule.relation, start, req.pset) if start else []
        if walk:
            end = _principal_end(walk, rule)
            walk += req.policy.graph.membership(req.pentity, req.claimed_groups, end)
            story.tuples = [" ".join(t) for t in walk]
            facts["relation"] = story.tuples
    if rule.condition is not None:
        _, story.conditions, read = rule.condition.explain(req.env)
        facts.update(read)
    matched = next((p for p in rule.patterns if _matches(p, req.resource)), ())
    for name, _ in matched:
        facts[f"resource.{name}"] = getattr(req.resource, name)
    return story


def _matches(pattern: tuple[tuple[str, Any], ...], resource: Resource) -> bool:
    return all((v := getattr(resource, name)) is not None and test(v) for name, test in pattern)


def _principal_end(walk: list[tuple[str, str, str]], rule: CompiledRule) -> str:
    # The last hop's far side is the principal end: right when walked forward, else left.
    assert rule.relation is not None
    last = walk[-1]
    return last[2] if rule.relation.hops[-1][1] else last[0]


def _who(rule: CompiledRule, req: RequestFacts, facts: dict[str, Any]) -> str:
    """``role writer``, ``user bob``, ``user adam (member of group suspended)``."""
    role = next((r for r in rule.rule.roles if r in req.principal.roles), None)
    if role is not None:
        facts["principal.role"] = role
    group = next((g for g in sorted(rule.groups) if g in req.pset), None)
    if group is not None:
        facts["principal.group"] = group
    if rule.principals or rule.relation or (group is not None and role is None):
        facts["principal"] = req.pentity
        who = _principal(req)
    elif role is not None:
        who = f"role {role}"
    else:
        return ""
    if role is not None and not who.startswith("role"):
        who += f" (role {role})"
    if group is not None:
        who += f" (member of {describe_entity(group)})"
    return who


def _principal(req: RequestFacts) -> str:
    return describe_entity(req.pentity)


def _because(story: Story) -> str:
    text = _through(story)
    if story.conditions:
        text += f", as {' and '.join(story.conditions)}"
    return text


def _through(story: Story) -> str:
    return f", through {' and '.join(story.tuples)}" if story.tuples else ""


def _decision(
    allow: bool, sentence: str, rules: list[CompiledRule], req: RequestFacts, story: Story
) -> Decision:
    first = rules[0]
    return Decision(
        allow=allow,
        reason=f"{sentence} (rule {first.id}, policy v{req.policy.version})",
        rule_ids=tuple(r.id for r in rules),
        policy_version=req.policy.version,
        facts=story.facts,
    )


def _act(action: str, resource: Resource, rule: CompiledRule) -> str:
    named = {name for fields in rule.patterns for name, _ in fields}
    return f"{VERBS[action]} {_noun(action, resource, named)}"


def _noun(action: str, r: Resource, named: set[str] | tuple[()]) -> str:
    """The resource as the object of a sentence: what the action is about, and the fields
    the rule's patterns named."""
    family = action.split(".")[0]
    if action == "workflow.start" or (family == "workflow" and r.workflow_id is None):
        noun = f"workflows of type {r.workflow_type}" if r.workflow_type else "workflows"
    elif family in ("workflow", "logs") and r.workflow_id is not None:
        noun = f"workflow {r.workflow_id}"
        if "workflow_type" in named and r.workflow_type:
            noun += f" of type {r.workflow_type}"
    elif family == "activity":
        noun = f"activities of type {r.activity_type}" if r.activity_type else "activities"
    elif family == "schedule":
        noun = f"schedule {r.schedule_id}" if r.schedule_id else "schedules"
    elif family == "admin":
        return f"tenant {r.tenant}"
    elif r.queue is not None:
        return f"queue {r.queue}"
    else:
        return f"tenant {r.tenant}"
    if r.queue is not None and ("queue" in named or family in ("logs", "worker")):
        noun += f" on queue {r.queue}"
    return noun
