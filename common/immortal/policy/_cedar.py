"""The same policy document decided by Cedar (``cedarpy``, the Rust engine in-process).

Translation: every rule becomes one Cedar policy annotated ``@id("<rule id>")``, so the
policy ids Cedar names as deciding map back to rule ids. ``member`` tuples become entity
parents, which Cedar's ``in`` follows transitively. A relation path is walked once per
policy version from every entity at its resource end, and what it reaches is stored on
that entity (``"path:<rule id>"``); the policy then asks ``principal in`` that set.
Each request adds two entities, the principal (whose parents are its own entity and its
claimed groups) and the resource (its fields, attributes and facets).

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
from immortal.policy._engine import DEFAULT_CACHE_SIZE, refuse_other_tenant
from immortal.policy._errors import PolicyError
from immortal.policy._model import RESOURCE_FACETS, Context, Decision, PrincipalLike, Resource
from immortal.policy._reasons import allowed, denied_by_default, denied_by_rules
from immortal.policy._relations import MEMBER

if TYPE_CHECKING:
    import cedarpy

__all__ = ["CedarEngine", "to_cedar"]

_PRINCIPAL = {"type": "Principal", "id": "request"}
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
            self._policies = self._cedar.PolicySet.from_str(self.policies_text)
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
        delta = [_principal_entity(req, omitted), _resource_entity(req, omitted)]
        result = self._cedar.is_authorized(
            {
                "principal": _PRINCIPAL,
                "action": {"type": "Action", "id": action},
                "resource": _RESOURCE,
                "context": _context(req, omitted),
            },
            self._policies,
            self._entities.with_added_json_str(json.dumps(delta)),
        )
        decision = self._decision(req, action, result, omitted)
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
                extra["cedar.errors"] = [self._named(e) for e in result.diagnostics.errors]
        if omitted:
            extra["cedar.omitted"] = omitted
        if not extra:
            return decision
        return decision.model_copy(update={"facts": {**decision.facts, **extra}})

    def _named(self, error: str) -> str:
        # Cedar numbers policies in the order of the text, which is the rules' order.
        rules = self.policy.rules
        return _POSITIONAL.sub(lambda m: f"rule {rules[int(m[1])].id}", error)


def to_cedar(policy: CompiledPolicy) -> str:
    """The Cedar policies for ``policy``, one per rule, in document order."""
    return "\n\n".join(_policy(rule) for rule in policy.rules) + "\n"


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
        parts.append(
            f"principal.roles.containsAny([{', '.join(_string(r) for r in rule.rule.roles)}])"
        )
    if rule.groups:
        parts.append(f"principal in [{', '.join(_entity(g) for g in sorted(rule.groups))}]")
    if rule.principals:
        parts.append(
            f"[{', '.join(_entity(p) for p in sorted(rule.principals))}].contains(principal.entity)"
        )
    if rule.patterns:
        parts.append("(" + " || ".join(_pattern(fields) for fields in rule.rule.resources) + ")")
    if rule.relation is not None:
        facet, attr = rule.relation.facet, _string(f"path:{rule.id}")
        parts.append(
            f"(resource.facets has {facet} && resource.facets.{facet} has {attr} "
            f"&& principal in resource.facets.{facet}[{attr}])"
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
        tests.append(f"resource has {name} && resource.{name} {op} {_string(glob)}")
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
        return "context" + "".join(f"[{_string(p)}]" for p in path.parts)
    head, *rest = path.parts
    return f"{path.root}.{head}" + "".join(f"[{_string(p)}]" for p in rest)


def _literal(value: Any, rule_id: str) -> str:
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


def _principal_entity(req: RequestFacts, omitted: list[str]) -> dict[str, Any]:
    p = req.principal
    return {
        "uid": _PRINCIPAL,
        "attrs": {
            "subject": p.subject,
            "tenant": p.tenant,
            "roles": list(p.roles),
            "groups": list(p.groups),
            "attributes": _value(p.attributes, "principal.attributes", omitted) or {},
            "entity": {"__entity": _uid(req.pentity)},
        },
        "parents": [_uid(req.pentity), *(_uid(g) for g in req.claimed_groups)],
    }


def _resource_entity(req: RequestFacts, omitted: list[str]) -> dict[str, Any]:
    r = req.resource
    attrs: dict[str, Any] = {
        name: getattr(r, name)
        for name in (
            "tenant",
            "queue",
            "workflow_type",
            "workflow_id",
            "activity_type",
            "schedule_id",
            "status",
        )
        if getattr(r, name) is not None
    }
    attrs["attributes"] = _value(r.attributes, "resource.attributes", omitted) or {}
    attrs["facets"] = {
        facet: {"__entity": _uid(entity)}
        for facet in RESOURCE_FACETS
        if (entity := r.facet(facet)) is not None
    }
    return {"uid": _RESOURCE, "attrs": attrs, "parents": []}


def _context(req: RequestFacts, omitted: list[str]) -> dict[str, Any]:
    fields = dict(req.context_fields())
    if req.resource.input is not None:
        fields["input"] = req.resource.input
    return _value(fields, "context", omitted) or {}


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
            if name == "context.input" or name.startswith("context.input."):
                name = name.removeprefix("context.")  # as a condition names it
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
