"""A policy document turned into what decisions read fast: rules indexed by action and by
who they name, patterns compiled, the relation graph and its group closures built."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from immortal.policy._actions import ACTIONS, expand_actions
from immortal.policy._conditions import Condition, ConditionEnv, parse_condition
from immortal.policy._document import PolicyDocument, Rule, rule_kinds
from immortal.policy._model import Context, PrincipalLike, Resource
from immortal.policy._relations import (
    RelationGraph,
    RelationPath,
    group_entity,
    parse_path,
    principal_entity,
)

__all__ = ["CompiledPolicy", "CompiledRule", "RequestFacts", "compile_policy"]

Matcher = Callable[[str], bool]


@dataclass(slots=True)
class CompiledRule:
    rule: Rule
    index: int  # its place in the document: reasons name the first deciding rule
    deny: bool
    kinds: str
    roles: frozenset[str]
    groups: frozenset[str]
    principals: frozenset[str]
    patterns: tuple[tuple[tuple[str, Matcher], ...], ...]
    relation: RelationPath | None
    condition: Condition | None

    @property
    def id(self) -> str:
        return self.rule.id

    def matches_resource(self, resource: Resource) -> bool:
        if not self.patterns:
            return True
        for fields in self.patterns:
            for name, matches in fields:
                value = getattr(resource, name)
                if value is None or not matches(value):
                    break
            else:
                return True
        return False


@dataclass(slots=True)
class ActionIndex:
    """The rules covering one action, by the first kind of "who" each names."""

    all: list[CompiledRule] = field(default_factory=list)
    open: list[CompiledRule] = field(default_factory=list)  # no roles, groups or principals
    by_role: dict[str, list[CompiledRule]] = field(default_factory=dict)
    by_group: dict[str, list[CompiledRule]] = field(default_factory=dict)
    by_principal: dict[str, list[CompiledRule]] = field(default_factory=dict)
    volatile: bool = False  # some rule's condition reads input or context


class CompiledPolicy:
    def __init__(self, document: PolicyDocument) -> None:
        self.document = document
        self.version = document.version
        self.tenant = document.tenant
        self.zone: tzinfo = zoneinfo.ZoneInfo(document.timezone)
        self.graph = RelationGraph(document.relations)
        self.rules = [
            _compile_rule(rule, i, document.group_type) for i, rule in enumerate(document.rules)
        ]
        self.by_id = {r.id: r for r in self.rules}
        self.by_action = {action: ActionIndex() for action in ACTIONS}
        for rule in self.rules:
            for action in {a for p in rule.rule.actions for a in expand_actions(p)}:
                _add(self.by_action[action], rule)
        reads = {root for r in self.rules if r.condition for root in r.condition.reads_attributes}
        # Only what some rule can read goes into a cache key.
        self.reads_principal_attributes = "principal" in reads
        self.reads_resource_attributes = "resource" in reads

    def facts(
        self, principal: PrincipalLike, resource: Resource, context: Context | None
    ) -> RequestFacts:
        return RequestFacts(self, principal, resource, context)


def compile_policy(document: PolicyDocument) -> CompiledPolicy:
    return CompiledPolicy(document)


class RequestFacts:
    """One request as rules see it; the principal's groups are closed only when a rule
    needs them."""

    __slots__ = (
        "_groups",
        "_pset",
        "_reached",
        "context",
        "env",
        "pentity",
        "policy",
        "principal",
        "resource",
        "volatile",
    )

    def __init__(
        self,
        policy: CompiledPolicy,
        principal: PrincipalLike,
        resource: Resource,
        context: Context | None,
    ) -> None:
        self.policy = policy
        self.principal = principal
        self.resource = resource
        self.context = context
        self.pentity = principal_entity(principal.subject, policy.document.principal_types)
        self._groups: list[str] | None = None
        self._pset: frozenset[str] | None = None
        self._reached: dict[str, bool] = {}  # rules often share a path: walk it once
        self.env = ConditionEnv(principal, resource, self.context_fields)
        self.volatile = False  # set once a rule's condition read input or context

    @property
    def claimed_groups(self) -> list[str]:
        if self._groups is None:
            kind = self.policy.document.group_type
            self._groups = [group_entity(g, kind) for g in self.principal.groups]
        return self._groups

    @property
    def pset(self) -> frozenset[str]:
        if self._pset is None:
            self._pset = self.policy.graph.principal_set(self.pentity, self.claimed_groups)
        return self._pset

    def related(self, path: RelationPath) -> bool:
        """Whether ``path`` leads from the resource to the principal or one of its groups."""
        known = self._reached.get(path.text)
        if known is None:
            start = self.resource.facet(path.facet)
            known = start is not None and not self.pset.isdisjoint(
                self.policy.graph.reach(path, start)
            )
            self._reached[path.text] = known
        return known

    def context_fields(self) -> Mapping[str, Any]:
        """What ``context.<name>`` reads for this request."""
        return (self.context or Context()).fields(self.policy.zone)


def _compile_rule(rule: Rule, index: int, group_type: str) -> CompiledRule:
    return CompiledRule(
        rule=rule,
        index=index,
        deny=rule.effect == "deny",
        kinds=rule_kinds(rule),
        roles=frozenset(rule.roles),
        groups=frozenset(group_entity(g, group_type) for g in rule.groups),
        principals=frozenset(rule.principals),
        patterns=tuple(
            tuple((name, _matcher(glob)) for name, glob in pattern.items())
            for pattern in rule.resources
        ),
        relation=parse_path(rule.relation) if rule.relation else None,
        condition=parse_condition(rule.when) if rule.when else None,
    )


def _matcher(glob: str) -> Matcher:
    stars = glob.count("*")
    if stars == 0:
        return glob.__eq__
    if glob == "*":
        return lambda value: True
    if stars == 1 and glob.endswith("*"):  # the common "refund*": no regex needed
        prefix = glob[:-1]
        return lambda value: value.startswith(prefix)
    regex = re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)
    return lambda value: regex.fullmatch(value) is not None


def _add(index: ActionIndex, rule: CompiledRule) -> None:
    index.all.append(rule)
    if rule.condition is not None and rule.condition.volatile:
        index.volatile = True
    if rule.roles:
        for role in rule.roles:
            index.by_role.setdefault(role, []).append(rule)
    elif rule.groups:
        for group in rule.groups:
            index.by_group.setdefault(group, []).append(rule)
    elif rule.principals:
        for entity in rule.principals:
            index.by_principal.setdefault(entity, []).append(rule)
    else:
        index.open.append(rule)
