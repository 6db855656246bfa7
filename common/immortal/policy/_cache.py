"""Decisions remembered per (principal, action, resource) for one policy version."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

from immortal.policy._compile import CompiledPolicy
from immortal.policy._model import Decision, PrincipalLike, Resource

__all__ = ["DecisionCache"]

Key = tuple[Hashable, ...]


class DecisionCache:
    """A bounded map from a request's key to its decision.

    Sound because a key holds everything a cacheable decision could have read: the
    principal's claims, the action, the resource's fields, and their attributes whenever
    some rule reads attributes. Input and time are not in it, so decisions that read them
    are never stored (the engine knows, per decision, whether one did). A new policy
    version gets a new engine and so an empty cache.
    """

    def __init__(self, policy: CompiledPolicy, size: int) -> None:
        self._policy = policy
        self._size = size
        # An OrderedDict drops its oldest entry in O(1); a dict's first key gets slower to
        # find as deletions at its front pile up.
        self._entries: OrderedDict[Key, Decision] = OrderedDict()

    def key(self, principal: PrincipalLike, action: str, resource: Resource) -> Key:
        p, r = principal, resource
        return (
            p.subject, p.tenant, tuple(p.roles), tuple(p.groups),
            _frozen(p.attributes) if self._policy.reads_principal_attributes else None,
            action,
            r.tenant, r.queue, r.workflow_type, r.workflow_id, r.activity_type, r.schedule_id,
            r.status,
            _frozen(r.attributes) if self._policy.reads_resource_attributes else None,
        )  # fmt: skip

    def get(self, key: Key) -> Decision | None:
        return self._entries.get(key)

    def put(self, key: Key, decision: Decision) -> None:
        if self._size <= 0:
            return
        if len(self._entries) >= self._size:
            self._entries.popitem(last=False)
        self._entries[key] = decision

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def _frozen(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if isinstance(value, Hashable):
        return (type(value).__name__, value)
    return repr(value)
