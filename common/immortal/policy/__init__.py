"""Policies: who may do what to which workflow, decided before anything runs, explained.

A tenant writes one policy document (YAML or JSON): relation tuples and rules of three
kinds that combine freely: RBAC (roles grant actions on resource patterns), ReBAC (a path
through relation tuples grants an action) and ABAC (a condition on the principal, the
resource, the workflow's input and the context). Deny by default; a matching deny rule
wins over every allow. See ``docs/policy.md``.

>>> from immortal.policy import BuiltinEngine, PolicyPrincipal, Resource, parse_policy
>>> engine = BuiltinEngine(parse_policy('''
... tenant: acme
... version: 7
... rules:
...   - id: r-writers-start
...     effect: allow
...     roles: [writer]
...     actions: [workflow.start]
...     resources: {workflow_type: refund}
... '''))
>>> ann = PolicyPrincipal(subject="ann", tenant="acme", roles=("writer",))
>>> refund = Resource(tenant="acme", workflow_type="refund")
>>> print(engine.decide(ann, "workflow.start", refund).reason)  # doctest: +ELLIPSIS
allowed: role writer of tenant acme may start workflows of type refund (rule r-writers-start, ...
"""

from immortal.policy._actions import ACTIONS, expand_actions
from immortal.policy._cases import Case, CaseReport, CaseResult, CaseSuite, load_cases, run_cases
from immortal.policy._cedar import CedarEngine
from immortal.policy._document import PolicyDocument, Rule
from immortal.policy._engine import BuiltinEngine, Explanation, PolicyEngine, RuleTrace
from immortal.policy._engines import ENGINE_NAMES, make_engine
from immortal.policy._errors import PolicyError
from immortal.policy._everywhere import reads_every_run
from immortal.policy._loader import load_policy, parse_policy
from immortal.policy._model import Context, Decision, PolicyPrincipal, PrincipalLike, Resource
from immortal.policy._render import render_explanation, render_policy
from immortal.policy._specs import parse_input, parse_principal, parse_resource
from immortal.policy._store import StoredPolicy, policy_key, read_policy, write_policy

__all__ = [
    "ACTIONS",
    "ENGINE_NAMES",
    "BuiltinEngine",
    "Case",
    "CaseReport",
    "CaseResult",
    "CaseSuite",
    "CedarEngine",
    "Context",
    "Decision",
    "Explanation",
    "PolicyDocument",
    "PolicyEngine",
    "PolicyError",
    "PolicyPrincipal",
    "PrincipalLike",
    "Resource",
    "Rule",
    "RuleTrace",
    "StoredPolicy",
    "expand_actions",
    "load_cases",
    "load_policy",
    "make_engine",
    "parse_input",
    "parse_policy",
    "parse_principal",
    "parse_resource",
    "policy_key",
    "read_policy",
    "reads_every_run",
    "render_explanation",
    "render_policy",
    "run_cases",
    "write_policy",
]
