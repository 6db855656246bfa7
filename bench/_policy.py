"""``python -m bench -w policy``: what a policy decision costs, with no broker involved.

A synthetic tenant policy of 1,000 rules and 10,000 relation tuples: 820 RBAC rules over
100 roles, 100 ABAC rules on the input, 40 on the time, 10 ReBAC rules over three kinds
of relation path, 30 deny rules. Each request class is timed decision by decision (the
median of a trial is a row's value); "cold" is a cache miss (the decision computed),
"cached" the same principal, action and resource asked again. A decision that read the
input or the time is never cached, so its "cached" figure is its cold one.

    python -m bench -w policy           # in the bench table
    python -m bench._policy --trials 3  # on its own
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench._harness import Metric, table
from immortal.policy import (
    BuiltinEngine,
    CedarEngine,
    Context,
    PolicyDocument,
    PolicyEngine,
    PolicyPrincipal,
    Resource,
)

TENANT = "bench"
ROLES, TYPES, QUEUES, TEAMS, USERS, PROJECTS, WORKFLOWS = 100, 200, 50, 100, 2_000, 500, 4_850
RBAC_ACTIONS = [
    "workflow.start", "workflow.read", "workflow.signal", "logs.read", "workflow.*",
    "workflow.cancel",
]  # fmt: skip
PATHS = [
    "principal owner resource.workflow",
    "resource.queue managed-by principal",
    "resource.workflow part-of project owned-by principal",
]
NOON = Context(time=datetime(2026, 12, 1, 12, 0, tzinfo=UTC))

Request = tuple[PolicyPrincipal, str, Resource, Context]
MetricFactory = Callable[[str, str, str], Metric]


def policy(seed: int = 7) -> PolicyDocument:
    """1,000 rules and 10,000 tuples, the same for every run."""
    rng = random.Random(seed)
    rules: list[dict[str, Any]] = []
    for i in range(820):
        rules.append({
            "id": f"rbac-{i}", "effect": "allow", "roles": [f"role-{i % ROLES}"],
            "actions": rng.sample(RBAC_ACTIONS, rng.randint(1, 2)),
            "resources": {"workflow_type": f"type-{rng.randrange(TYPES // 10)}*"},
        })  # fmt: skip
    for i in range(100):
        limit = rng.randrange(1_000, 100_000)
        rules.append({
            "id": f"abac-input-{i}", "effect": "allow", "roles": [f"role-{i}"],
            "actions": ["workflow.start"], "resources": {"workflow_type": f"type-{i}"},
            "when": f"input.amount <= {limit} and input.currency in ['EUR', 'USD']",
        })  # fmt: skip
    for i in range(40):
        rules.append({
            "id": f"abac-time-{i}", "effect": "allow", "roles": [f"role-{i}"],
            "actions": ["workflow.terminate"], "when": "9 <= context.hour < 18",
        })  # fmt: skip
    for i in range(10):
        rules.append({
            "id": f"rebac-{i}", "effect": "allow", "relation": PATHS[i % 3],
            "actions": ["workflow.read", "workflow.signal", "logs.read"][: 1 + i % 3],
        })  # fmt: skip
    for i in range(30):
        deny: dict[str, Any] = {"id": f"deny-{i}", "effect": "deny", "actions": ["workflow.start"]}
        if i % 2:
            deny |= {"roles": [f"role-{i}"], "when": f"input.amount > {50_000 + i}"}
        else:
            deny |= {"groups": [f"team:t{i}"], "resources": {"queue": f"queue-{i}"}}
        rules.append(deny)
    return PolicyDocument.model_validate(
        {"tenant": TENANT, "version": 1, "rules": rules, "relations": _tuples(rng)}
    )


def _tuples(rng: random.Random) -> list[str]:
    out = [f"team:t{t} member team:t{t // 10}" for t in range(10, TEAMS)]  # nested teams
    out += [f"queue:queue-{q} managed-by team:t{q % TEAMS}" for q in range(QUEUES)]
    out += [f"project:p{p} owned-by team:t{p % TEAMS}" for p in range(PROJECTS)]
    out += [f"workflow:w{w} part-of project:p{w % PROJECTS}" for w in range(1_500)]
    for u in range(USERS):
        out += [f"user:u{u} member team:t{t}" for t in {rng.randrange(TEAMS) for _ in range(2)}]
    out += [f"user:u{rng.randrange(USERS)} owner workflow:w{w}" for w in range(WORKFLOWS)]
    return out[:10_000]


class _Requests:
    """Requests shaped like the rules, so that most reach the rules they are named for."""

    def __init__(self, doc: PolicyDocument, seed: int) -> None:
        self.rng = random.Random(seed)
        self.owners = [(left, right) for left, rel, right in doc.relations if rel == "owner"]

    def user(self, *roles: str) -> PolicyPrincipal:
        roles = roles or tuple(f"role-{self.rng.randrange(ROLES)}" for _ in range(2))
        subject = f"u{self.rng.randrange(USERS)}"
        return PolicyPrincipal(subject=subject, tenant=TENANT, roles=roles)

    def run(self, **fields: Any) -> Resource:
        fields.setdefault("workflow_id", f"w{self.rng.randrange(WORKFLOWS)}")
        fields.setdefault("queue", f"queue-{self.rng.randrange(QUEUES)}")
        return Resource(tenant=TENANT, **fields)

    def rbac(self) -> Request:
        kind = f"type-{self.rng.randrange(TYPES)}"
        return self.user(), "workflow.start", self.run(workflow_type=kind), NOON

    def rebac(self) -> Request:
        if self.rng.random() < 0.5:  # an owner reading their run; else anyone's, via teams
            owner, run = self.rng.choice(self.owners)
            principal = PolicyPrincipal(subject=owner.removeprefix("user:"), tenant=TENANT)
            return (
                principal,
                "workflow.read",
                self.run(workflow_id=run.removeprefix("workflow:")),
                NOON,
            )
        return self.user("none"), "workflow.read", self.run(), NOON

    def abac_input(self) -> Request:
        i = self.rng.randrange(100)
        amount = {
            "amount": self.rng.randrange(100_000),
            "currency": self.rng.choice(["EUR", "GBP"]),
        }
        start = self.run(workflow_type=f"type-{i}", input=amount)
        return self.user(f"role-{i}"), "workflow.start", start, NOON

    def abac_time(self) -> Request:
        return self.user(f"role-{self.rng.randrange(40)}"), "workflow.terminate", self.run(), NOON

    def default_deny(self) -> Request:
        return self.user(), "admin.policy", Resource(tenant=TENANT), NOON


def requests(doc: PolicyDocument, n: int, seed: int = 11) -> dict[str, list[Request]]:
    """``n`` requests per class."""
    r = _Requests(doc, seed)
    kinds = {
        "rbac start": r.rbac,
        "rebac read": r.rebac,
        "abac start (input)": r.abac_input,
        "abac terminate (time)": r.abac_time,
        "default deny": r.default_deny,
    }
    return {name: [make() for _ in range(n)] for name, make in kinds.items()}


def _median_us(engine: PolicyEngine, batch: list[Request]) -> float:
    times = []
    clock = time.perf_counter_ns
    for principal, action, resource, context in batch:
        t0 = clock()
        engine.decide(principal, action, resource, context)
        times.append(clock() - t0)
    return statistics.median(times) / 1000


def measure(
    metric: MetricFactory, *, trials: int, n: int = 2_000, cedar: bool = True
) -> dict[str, Any]:
    """Fill ``metric(name, unit, target)`` rows; returns what the run was made of."""
    t0 = time.perf_counter()
    doc = policy()
    cold = BuiltinEngine(doc, cache_size=0)
    metric("policy: compile 1,000 rules + 10,000 tuples", "ms", "").values.append(
        (time.perf_counter() - t0) * 1000
    )
    batches = requests(doc, n)
    allowed = {k: sum(cold.decide(*r).allow for r in v) / len(v) for k, v in batches.items()}
    for _ in range(trials):
        warm = BuiltinEngine(doc)
        for name, batch in batches.items():
            metric(f"policy cold: {name}", "µs", "<= 50").values.append(_median_us(cold, batch))
            _median_us(warm, batch)  # fill the cache
            metric(f"policy cached: {name}", "µs", "").values.append(_median_us(warm, batch))
    if cedar:
        t0 = time.perf_counter()
        cedar_engine = CedarEngine(doc, cache_size=0)
        metric("policy, Cedar: translate and load", "ms", "").values.append(
            (time.perf_counter() - t0) * 1000
        )
        for _ in range(trials):
            for name, batch in batches.items():
                us = _median_us(cedar_engine, batch[: max(n // 4, 1)])
                metric(f"policy cold, Cedar: {name}", "µs", "").values.append(us)
    return {"rules": len(doc.rules), "tuples": len(doc.relations), "allowed share": allowed}


def report(shape: dict[str, Any]) -> str:
    shares = ", ".join(f"{k} {v:.0%}" for k, v in shape["allowed share"].items())
    return f"policy: {shape['rules']:,} rules, {shape['tuples']:,} tuples; allowed: {shares}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("-n", type=int, default=2_000, help="requests per class")
    ap.add_argument("--no-cedar", action="store_true", help="the built-in engine only")
    args = ap.parse_args()
    metrics: dict[str, Metric] = {}

    def metric(name: str, unit: str, target: str = "") -> Metric:
        return metrics.setdefault(name, Metric(name, unit, target=target))

    shape = measure(metric, trials=args.trials, n=args.n, cedar=not args.no_cedar)
    print(f"\n{report(shape)}; {args.trials} trials\n")
    print(table(list(metrics.values())))


if __name__ == "__main__":
    main()
