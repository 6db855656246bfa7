"""The built-in engine: deny by default, explicit deny wins, every decision explained."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from immortal.policy._actions import check_action
from immortal.policy._cache import DecisionCache
from immortal.policy._compile import ActionIndex, CompiledPolicy, CompiledRule, RequestFacts
from immortal.policy._conditions import InputUnreadable, Undefined
from immortal.policy._document import PolicyDocument
from immortal.policy._errors import PolicyError
from immortal.policy._model import Context, Decision, PrincipalLike, Resource
from immortal.policy._reasons import (
    allowed,
    denied_by_default,
    denied_by_rules,
    denied_unreadable,
    describe_entity,
    rule_story,
)

__all__ = [
    "BuiltinEngine", "Explanation", "PolicyEngine", "RuleTrace", "refuse_other_tenant",
    "unreadable_refusal",
]  # fmt: skip

DEFAULT_CACHE_SIZE = 65_536

# Why a rule did or did not apply, in the order a rule is checked.
APPLIES, NOT_WHO, NOT_RESOURCE, NOT_RELATED, CONDITION_FALSE, CONDITION_UNDEFINED = range(6)
# The condition read an input field of an input that cannot be read (it is encrypted):
# the rule would decide, for all we know, so the request is refused (see ``_settle``).
CONDITION_UNREADABLE = 6


@runtime_checkable
class PolicyEngine(Protocol):
    """Decides whether ``principal`` may do ``action`` on ``resource``, and says why."""

    @property
    def policy_version(self) -> int: ...

    def decide(
        self,
        principal: PrincipalLike,
        action: str,
        resource: Resource,
        context: Context | None = None,
    ) -> Decision: ...


class RuleTrace(BaseModel):
    """One rule ``explain`` looked at, and what came of it."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    effect: Literal["allow", "deny"]
    kinds: str
    applies: bool
    detail: str


class Explanation(BaseModel):
    """A decision with every rule that covers the action and why each applied or not."""

    model_config = ConfigDict(frozen=True)

    decision: Decision
    action: str
    considered: tuple[RuleTrace, ...]
    rules_total: int


class BuiltinEngine:
    """The engine Immortal ships, for one tenant's policy version.

    >>> engine = BuiltinEngine(load_policy("policy.yaml"))  # doctest: +SKIP
    >>> engine.decide(principal, "workflow.start", Resource(tenant="acme", workflow_type="refund"))
    ... # doctest: +SKIP
    Decision(allow=True, reason='allowed: role writer of tenant acme may start ...', ...)
    """

    def __init__(self, document: PolicyDocument, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.policy = CompiledPolicy(document)
        self.cache = DecisionCache(self.policy, cache_size)

    @property
    def policy_version(self) -> int:
        return self.policy.version

    @property
    def document(self) -> PolicyDocument:
        return self.policy.document

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
        key = self.cache.key(principal, action, resource)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        req = self.policy.facts(principal, resource, context)
        decision = self._decide(req, action, _candidates(self.policy.by_action[action], req))
        if not req.volatile:
            self.cache.put(key, decision)
        return decision

    def explain(
        self,
        principal: PrincipalLike,
        action: str,
        resource: Resource,
        context: Context | None = None,
    ) -> Explanation:
        """The decision, and for every rule covering ``action`` whether it applied and why
        (what ``immortal policy explain`` prints)."""
        refusal = refuse_other_tenant(self.policy, principal, action, resource)
        rules = self.policy.by_action[action].all
        total = len(self.policy.rules)
        if refusal is not None:
            return Explanation(decision=refusal, action=action, considered=(), rules_total=total)
        req = self.policy.facts(principal, resource, context)
        traces: list[RuleTrace] = []
        decision = self._decide(req, action, rules, traces)
        return Explanation(
            decision=decision, action=action, considered=tuple(traces), rules_total=total
        )

    def _decide(
        self,
        req: RequestFacts,
        action: str,
        rules: list[CompiledRule],
        traces: list[RuleTrace] | None = None,
    ) -> Decision:
        allows: list[CompiledRule] = []
        denies: list[CompiledRule] = []
        blind: list[CompiledRule] = []
        near_miss: CompiledRule | None = None
        for rule in rules:
            outcome = _outcome(rule, req)
            if traces is not None:
                traces.append(_trace(rule, req, outcome))
            if outcome == APPLIES:
                (denies if rule.deny else allows).append(rule)
            elif outcome == CONDITION_UNREADABLE:
                blind.append(rule)
            elif outcome >= CONDITION_FALSE and not rule.deny and near_miss is None:
                near_miss = rule
        if denies:
            return denied_by_rules(denies, req, action)
        refusal = _settle(blind, req, bool(allows))
        if refusal is not None:
            return refusal
        if allows:
            return allowed(allows, req, action)
        return denied_by_default(req, action, near_miss)


def refuse_other_tenant(
    policy: CompiledPolicy, principal: PrincipalLike, action: str, resource: Resource
) -> Decision | None:
    """The check before any rule: a tenant's policy speaks only for its own tenant.
    ``PolicyError`` for an action no policy knows."""
    try:
        check_action(action)
    except ValueError as e:
        raise PolicyError(str(e)) from None
    if principal.tenant != policy.tenant:
        why = f"principal of tenant {principal.tenant} may not act in tenant {policy.tenant}"
    elif resource.tenant != policy.tenant:
        why = f"the policy of tenant {policy.tenant} does not cover tenant {resource.tenant}"
    else:
        return None
    return Decision(
        allow=False,
        reason=f"denied: {why} (policy v{policy.version})",
        policy_version=policy.version,
        facts={"principal.tenant": principal.tenant, "resource.tenant": resource.tenant},
    )


def unreadable_refusal(
    policy: CompiledPolicy, req: RequestFacts, action: str, decision: Decision
) -> Decision:
    """``decision`` (another engine's, for ``req``) as the built-in engine settles a
    request whose input cannot be read: a deny by rules stands; otherwise a rule that
    would decide but reads an input field not offered refuses (a deny rule always, an
    allow rule when nothing else allows)."""
    if req.resource.input_unreadable is None or not policy.by_action[action].volatile:
        return decision
    if not decision.allow and decision.rule_ids:
        return decision
    candidates = _candidates(policy.by_action[action], req)
    blind = [r for r in candidates if _outcome(r, req) == CONDITION_UNREADABLE]
    return _settle(blind, req, decision.allow) or decision


def _settle(blind: list[CompiledRule], req: RequestFacts, allowed: bool) -> Decision | None:
    """The refusal for rules whose condition read an unreadable input field: any deny
    rule among them (it might have fired), or an allow rule when no other rule allows
    (the reason then names what could not be read, not "no rule allows")."""
    denies = [r for r in blind if r.deny]
    if denies:
        return denied_unreadable(denies, req)
    if blind and not allowed:
        return denied_unreadable(blind, req)
    return None


def candidates(index: ActionIndex, req: RequestFacts) -> list[CompiledRule]:
    """The rules of ``index`` that can apply to ``req``'s principal (see ``_candidates``)."""
    return _candidates(index, req)


def outcome(rule: CompiledRule, req: RequestFacts) -> int:
    """How far ``rule`` got for ``req``: ``APPLIES``, ``NOT_WHO``, ... (see ``_outcome``)."""
    return _outcome(rule, req)


def _candidates(index: ActionIndex, req: RequestFacts) -> list[CompiledRule]:
    """The rules that can apply to this principal: the ones naming no one, and the ones
    naming one of its roles, groups or itself. Every other rule fails at "who"."""
    found = list(index.open)
    many = False
    for role in req.principal.roles:
        rules = index.by_role.get(role)
        if rules:
            many = many or bool(found)
            found += rules
    if index.by_group:
        for group in req.pset & index.by_group.keys():
            many = many or bool(found)
            found += index.by_group[group]
    rules = index.by_principal.get(req.pentity)
    if rules:
        many = many or bool(found)
        found += rules
    if many:  # a rule may be listed under two roles; reasons cite rules in document order
        found = sorted({r.index: r for r in found}.values(), key=lambda r: r.index)
    return found


def _outcome(rule: CompiledRule, req: RequestFacts) -> int:
    if rule.roles and rule.roles.isdisjoint(req.principal.roles):
        return NOT_WHO
    if rule.groups and rule.groups.isdisjoint(req.pset):
        return NOT_WHO
    if rule.principals and req.pentity not in rule.principals:
        return NOT_WHO
    if not rule.matches_resource(req.resource):
        return NOT_RESOURCE
    if rule.relation is not None and not req.related(rule.relation):
        return NOT_RELATED
    if rule.condition is not None:
        req.volatile = req.volatile or rule.condition.volatile
        try:
            if not rule.condition.holds(req.env):
                return CONDITION_FALSE
        except InputUnreadable:
            return CONDITION_UNREADABLE
        except Undefined:
            return CONDITION_UNDEFINED
    return APPLIES


def _trace(rule: CompiledRule, req: RequestFacts, outcome: int) -> RuleTrace:
    detail = _detail(rule, req, outcome)
    return RuleTrace(
        rule_id=rule.id,
        effect=rule.rule.effect,
        kinds=rule.kinds,
        applies=outcome == APPLIES,
        detail=detail,
    )


def _detail(rule: CompiledRule, req: RequestFacts, outcome: int) -> str:
    r = rule.rule
    if outcome == NOT_WHO:
        if rule.roles and rule.roles.isdisjoint(req.principal.roles):
            return f"needs role {' or '.join(r.roles)}"
        if rule.groups and rule.groups.isdisjoint(req.pset):
            groups = " or ".join(describe_entity(g) for g in sorted(rule.groups))
            return f"needs membership of {groups}"
        return f"names only {', '.join(r.principals)}"
    if outcome == NOT_RESOURCE:
        return "resource matches none of " + "; ".join(
            ", ".join(f"{k}={v}" for k, v in pattern.items()) for pattern in r.resources
        )
    if outcome == NOT_RELATED:
        return f"no relation {r.relation!r} links the resource to {describe_entity(req.pentity)}"
    if outcome != APPLIES:
        assert rule.condition is not None
        said = " and ".join(rule.condition.explain(req.env)[1])
        verdict = "is false" if outcome == CONDITION_FALSE else "has no value"
        return f"condition {r.when!r} {verdict}: {said}"
    story = rule_story(rule, req)
    parts = [
        story.who or "anyone",
        *(["through " + " and ".join(story.tuples)] if story.tuples else []),
    ]
    return "; ".join([", ".join(parts), *story.conditions])
