"""Text for people: a policy (``immortal policy show``) and an explanation
(``immortal policy explain``)."""

from __future__ import annotations

from collections import Counter

from immortal.policy._conditions import format_value
from immortal.policy._document import PolicyDocument, Rule, rule_kinds
from immortal.policy._engine import Explanation

__all__ = ["render_explanation", "render_policy"]


def render_policy(document: PolicyDocument, *, tuples: int = 20) -> str:
    """The policy as a table of rules and a summary of its relations (at most ``tuples``
    of them written out)."""
    d = document
    lines = [
        f"policy of tenant {d.tenant}, version {d.version} (times in {d.timezone}): "
        f"{len(d.rules)} rules, {len(d.relations)} relation tuples",
    ]
    if d.description:
        lines.append(d.description)
    lines += [
        "",
        "rules (nothing is allowed unless a rule allows it; a deny rule wins over every allow):",
    ]
    rows = [["id", "effect", "kind", "actions", "who, what and when"]]
    rows += [[r.id, r.effect, rule_kinds(r), ", ".join(r.actions), _scope(r)] for r in d.rules]
    lines += ["  " + line for line in _table(rows)] if d.rules else ["  (none)"]
    if d.relations:
        by_relation = Counter(rel for _, rel, _ in d.relations)
        lines += [
            "",
            "relations: " + ", ".join(f"{rel} ({n})" for rel, n in sorted(by_relation.items())),
        ]
        lines += [f"  {' '.join(t)}" for t in d.relations[:tuples]]
        if len(d.relations) > tuples:
            lines.append(f"  ... and {len(d.relations) - tuples} more")
    return "\n".join(lines)


def render_explanation(explanation: Explanation) -> str:
    """The decision, its facts, and every rule covering the action with what came of it."""
    e, d = explanation, explanation.decision
    lines = [d.reason]
    if d.facts:
        lines.append("facts: " + ", ".join(f"{k} = {_fact(v)}" for k, v in d.facts.items()))
    if not e.considered:
        covering = "no rule" if e.rules_total else "the policy has no rules"
        lines.append(f"rules considered for {e.action}: none ({covering} was looked at)")
        return "\n".join(lines)
    lines.append(f"rules covering {e.action}: {len(e.considered)} of {e.rules_total}")
    rows = [
        [t.rule_id, t.effect, t.kinds, "applies" if t.applies else "skipped", t.detail]
        for t in e.considered
    ]
    lines += ["  " + line for line in _table(rows)]
    return "\n".join(lines)


def _scope(rule: Rule) -> str:
    parts = []
    if rule.roles:
        parts.append("roles " + ", ".join(rule.roles))
    if rule.groups:
        parts.append("groups " + ", ".join(rule.groups))
    if rule.principals:
        parts.append(", ".join(rule.principals))
    if rule.relation:
        parts.append(f"related: {rule.relation}")
    if rule.resources:
        parts.append(
            " or ".join(", ".join(f"{k}={v}" for k, v in p.items()) for p in rule.resources)
        )
    if rule.when:
        parts.append(f"when {rule.when}")
    return "; ".join(parts) or "anyone, anything"


def _fact(value: object) -> str:
    return format_value(value) if not isinstance(value, str) else value


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]
