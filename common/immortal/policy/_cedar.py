"""The same policy document decided by Cedar (``cedarpy``, the Rust engine in-process).

Translation: every rule becomes one Cedar policy annotated ``@id("<rule id>")``, so the
policy ids Cedar names as deciding map back to rule ids; each action gets the set of the
policies that cover it, so Cedar reads only those. ``member`` tuples become entity
parents, which Cedar's ``in`` follows transitively. A relation path is walked once per
policy version from every entity at its resource end, and what it reaches is stored on
that entity (``"path:<rule id>"``); the policy then asks whether the principal is ``in``
that set.

A request adds no entities (copying a large entity set per request costs milliseconds):
the principal is its own entity (``user::"ann"``), and what the request knows travels in
the context: ``context.principal`` and ``context.resource`` (their fields), ``facets``
(the resource's entities), ``claimed`` (the groups the principal's claims name, with the
groups those belong to), ``input`` and ``env`` (the time fields and the caller's context).

Cedar has no fractional numbers: a value such as ``input.amount: 12.5`` is left out of
what Cedar sees (a whole ``12.0`` becomes ``12``), so a condition reading it has no value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from immortal.policy._cache import DecisionCache
from immortal.policy._compile import CompiledPolicy, CompiledRule, RequestFacts
from immortal.policy._conditions import And, ListOf, Literal, Node, Not, Or, Path
from immortal.policy._document import PolicyDocument
from immortal.policy._engine import DEFAULT_CACHE_SIZE, refuse_other_tenant, unreadable_refusal
from immortal.policy._errors import PolicyError
from immortal.policy._model import RESOURCE_FACETS, Context, Decision, PrincipalLike, Resource
from immortal.policy._reasons import allowed, denied_by_default, denied_by_rules
from immortal.policy._relations import MEMBER

if TYPE_CHECKING:
    import cedarpy

__all__ = ["CedarEngine", "to_cedar"]

_RESOURCE = {"type": "Resource", "id": "request"}
_RESERVED_KEYS = frozenset({"__entity", "__extn", "__expr"})
_POSITIONAL = re.compile(r"policy `policy(\d+)`")


class CedarEngine:
    """A :class:`PolicyEngine` that asks Cedar. Needs ``cedarpy`` (``immortal[cedar]``).

    Decisions are Cedar's; the reason sentence is written from the rules Cedar names as
    deciding, as the built-in engine writes it. A default deny says no more than "no rule
    allows": Cedar does not report the rules that nearly applied.
    """

    def __init__(self, document: PolicyDocument, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._cedar = _import_cedarpy()
        self.policy = CompiledPolicy(document)
        self.policies_text = to_cedar(self.policy)
        try:
            self._sets = {
                action: self._cedar.PolicySet.from_str(_policies(index.all))
                for action, index in self.policy.by_action.items()
            }
            self._entities = self._cedar.Entities.from_json_str(
                json.dumps(_base_entities(self.policy))
            )
        except ValueError as e:
            raise PolicyError(f"Cedar refused the translated policy: {e}") from None
        self.cache = DecisionCache(self.policy, cache_size)

    @property
    def policy_version(self) -> int:
        return self.policy.version

    def decide(
        self,
        principal: PrincipalLike,
        action: str,
        resource: Resource,
        context: Context | None = None,
    ) -> Decision:
        refusal = refuse_other_tenant(self.policy, principal, action, resource)
        if refusal is not None:
            return refusal
        # Cedar does not say what it read: cache only actions no input or time rule covers.
        cacheable = not self.policy.by_action[action].volatile
        key = self.cache.key(principal, action, resource)
        hit = self.cache.get(key) if cacheable else None
        if hit is not None:
            return hit
        req = self.policy.facts(principal, resource, context)
        omitted: list[str] = []
        result = self._cedar.is_authorized(
            {
                "principal": _uid(req.pentity),
                "action": {"type": "Action", "id": action},
                "resource": _RESOURCE,
                "context": _context(req, omitted),
            },
            self._sets[action],
            self._entities,
        )
        decision = self._decision(req, action, result, omitted)
        # Cedar skips a rule whose condition erred, as it skips one reading a missing
        # field; one reading a field of an unreadable input must refuse, in both engines.
        decision = unreadable_refusal(self.policy, req, action, decision)
        if cacheable:
            self.cache.put(key, decision)
        return decision

    def _decision(
        self, req: RequestFacts, action: str, result: cedarpy.AuthzResult, omitted: list[str]
    ) -> Decision:
        ids = result.diagnostics.id_annotations_by_reason
        rules = sorted(
            (self.policy.by_id[ids[r]] for r in result.diagnostics.reasons), key=lambda r: r.index
        )
        extra: dict[str, Any] = {}
        if result.allowed:
            decision = allowed(rules, req, action)
        elif rules:
            decision = denied_by_rules(rules, req, action)
        else:
            decision = denied_by_default(req, action)
            if result.diagnostics.errors:
                # Policies whose condition erred (a missing name, say) were skipped, as
                # ours are; after a default deny, that is what a reader wants to know.
                rules_here = self.policy.by_action[action].all
                extra["cedar.errors"] = [_named(e, rules_here) for e in result.diagnostics.errors]
        if omitted:
            extra["cedar.omitted"] = omitted
        if not extra:
            return decision
        return decision.model_copy(update={"facts": {**decision.facts, **extra}})


def to_cedar(policy: CompiledPolicy) -> str:
    """The Cedar policies for ``policy``, one per rule, in document order."""
    return _policies(policy.rules)


def _policies(rules: list[CompiledRule]) -> str:
    return "\n\n".join(_policy(rule) for rule in rules) + "\n"


def _named(error: str, rules: list[CompiledRule]) -> str:
    # Cedar numbers policies in the order of their text, which is the rules' order.
    return _POSITIONAL.sub(lambda m: f"rule {rules[int(m[1])].id}", error)


def _import_cedarpy() -> Any:
    try:
        import cedarpy
    except ImportError:
        raise PolicyError("the Cedar engine needs cedarpy: pip install 'immortal[cedar]'") from None
    return cedarpy


# -- policies --------------------------------------------------------------------------


def _policy(rule: CompiledRule) -> str:
    from immortal.policy._actions import expand_actions

    actions = sorted({a for p in rule.rule.actions for a in expand_actions(p)})
    scope = ", ".join(f"Action::{_string(a)}" for a in actions)
    parts: list[str] = []
    if rule.roles:
        roles = ", ".join(_string(r) for r in rule.rule.roles)
        parts.append(f"context.principal.roles.containsAny([{roles}])")
    if rule.groups:
        groups = f"[{', '.join(_entity(g) for g in sorted(rule.groups))}]"
        parts.append(f"(principal in {groups} || context.claimed.containsAny({groups}))")
    if rule.principals:
        parts.append(
            f"[{', '.join(_entity(p) for p in sorted(rule.principals))}].contains(principal)"
        )
    if rule.patterns:
        parts.append("(" + " || ".join(_pattern(fields) for fields in rule.rule.resources) + ")")
    if rule.relation is not None:
        facet, attr = rule.relation.facet, _string(f"path:{rule.id}")
        reached = f"context.facets.{facet}[{attr}]"
        parts.append(
            f"(context.facets has {facet} && context.facets.{facet} has {attr} "
            f"&& (principal in {reached} || context.claimed.containsAny({reached})))"
        )
    if rule.condition is not None:
        parts.append(_expr(rule.condition.node, rule.id))
    effect = "forbid" if rule.deny else "permit"
    when = f"\nwhen {{ {' && '.join(parts)} }}" if parts else ""
    head = f"@id({_string(rule.id)})\n{effect} (principal, action in [{scope}], resource)"
    return f"{head}{when};"


def _pattern(fields: Mapping[str, str]) -> str:
    tests = []
    for name, glob in fields.items():
        op = "like" if "*" in glob else "=="
        tests.append(f"context.resource has {name} && context.resource.{name} {op} {_string(glob)}")
    return "(" + " && ".join(tests) + ")"


def _expr(node: Node, rule_id: str) -> str:
    if isinstance(node, Path):
        return _path(node)
    if isinstance(node, Literal):
        return _literal(node.value, rule_id)
    if isinstance(node, ListOf):
        return "[" + ", ".join(_expr(i, rule_id) for i in node.items) + "]"
    if isinstance(node, Not):
        return f"!({_expr(node.operand, rule_id)})"
    if isinstance(node, And | Or):
        glue = " && " if isinstance(node, And) else " || "
        return "(" + glue.join(_expr(op, rule_id) for op in node.operands) + ")"
    left, right = _expr(node.left, rule_id), _expr(node.right, rule_id)
    if node.op == "in":
        return f"({right}).contains({left})"
    if node.op == "not in":
        return f"!(({right}).contains({left}))"
    return f"({left} {node.op} {right})"


def _path(path: Path) -> str:
    if path.root == "input":
        return "context.input" + "".join(f"[{_string(p)}]" for p in path.parts)
    if path.root == "context":
        return "context.env" + "".join(f"[{_string(p)}]" for p in path.parts)
    head, *rest = path.parts
    return f"context.{path.root}.{head}" + "".join(f"[{_string(p)}]" for p in rest)


def _literal(value: Any, rule_id: str) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v, rule_id) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not value.is_integer():
            raise PolicyError(
                f"Cedar has no fractional numbers, and the condition uses {value}", rule=rule_id
            )
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return _string(value)


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _entity(entity: str) -> str:
    kind, _, ident = entity.partition(":")
    return f"{kind}::{_string(ident)}"


# -- entities --------------------------------------------------------------------------


def _uid(entity: str) -> dict[str, str]:
    kind, _, ident = entity.partition(":")
    return {"type": kind, "id": ident}


def _base_entities(policy: CompiledPolicy) -> list[dict[str, Any]]:
    graph, document = policy.graph, policy.document
    everyone = sorted({e for left, _, right in document.relations for e in (left, right)})
    attrs: dict[str, dict[str, Any]] = {e: {} for e in everyone}
    for rule in policy.rules:
        if rule.relation is None:
            continue
        for entity in everyone:
            if entity.partition(":")[0] == rule.relation.facet:
                reached = graph.reach(rule.relation, entity)
                if reached:
                    attrs[entity][f"path:{rule.id}"] = [
                        {"__entity": _uid(e)} for e in sorted(reached)
                    ]
    return [
        {
            "uid": _uid(e),
            "attrs": attrs[e],
            "parents": [_uid(g) for g in sorted(graph.related(e, MEMBER, True))],
        }
        for e in everyone
    ]


def _context(req: RequestFacts, omitted: list[str]) -> dict[str, Any]:
    p, r, graph = req.principal, req.resource, req.policy.graph
    claimed = {g for group in req.claimed_groups for g in (group, *graph.ancestors(group))}
    fields = {
        name: getattr(r, name)
        for name in (
            "tenant", "queue", "workflow_type", "workflow_id", "activity_type", "schedule_id",
            "status",
        )
        if getattr(r, name) is not None
    }  # fmt: skip
    context: dict[str, Any] = {
        "principal": {
            "subject": p.subject,
            "tenant": p.tenant,
            "roles": list(p.roles),
            "groups": list(p.groups),
            "attributes": _value(p.attributes, "principal.attributes", omitted) or {},
        },
        "resource": {
            **fields,
            "attributes": _value(r.attributes, "resource.attributes", omitted) or {},
        },
        "facets": {
            facet: {"__entity": _uid(entity)}
            for facet in RESOURCE_FACETS
            if (entity := r.facet(facet)) is not None
        },
        "claimed": [{"__entity": _uid(g)} for g in sorted(claimed)],
        "env": _value(req.context_fields(), "context", omitted) or {},
    }
    if r.input is not None:
        context["input"] = _value(r.input, "input", omitted) or {}
    return context


def _value(value: Any, where: str, omitted: list[str]) -> Any:
    """``value`` as Cedar's JSON takes it; what Cedar cannot hold goes into ``omitted``
    (by its name in a condition) and is left out."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = f"{where}.{key}"
            if str(key) in _RESERVED_KEYS:
                omitted.append(name)
                continue
            converted = _value(item, name, omitted)
            if converted is not None:
                out[str(key)] = converted
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [_value(item, f"{where}[]", omitted) for item in value]
        return [i for i in items if i is not None]
    if value is not None:
        omitted.append(where)
    return None
