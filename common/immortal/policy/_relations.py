"""Relation tuples (ReBAC), the paths rules follow through them, and group closures.

A tuple reads like a sentence, ``user:ann owner workflow:order-42``: a left entity, a
relation, a right entity. ``member`` tuples (``user:bob member team:ops``) make groups;
membership is transitive, and a principal also belongs to the groups its claims name.

A rule's path alternates terms and relations and reads the same way, from one end to the
other: ``principal owner resource.workflow``, ``resource.queue managed-by principal``,
``resource.workflow part-of project owned-by principal``. One end is ``principal`` (the
principal or any group it belongs to), the other ``resource.<facet>``; a middle term is
an entity type, or ``*`` for any.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from immortal.policy._model import RESOURCE_FACETS

__all__ = [
    "MEMBER",
    "RelationGraph",
    "RelationPath",
    "Tuple",
    "group_entity",
    "parse_entity",
    "parse_path",
    "parse_tuple",
    "principal_entity",
]

MEMBER = "member"
_MEMBER_ALIASES = {"member": MEMBER, "member-of": MEMBER}
_TYPE = re.compile(r"^[a-z][a-z0-9_]*$")
_RELATION = re.compile(r"^[a-z][a-z0-9_-]*$")
# Cedar keywords cannot name entity types; keeping them out keeps both engines equal.
_RESERVED = frozenset(
    "principal action resource context true false if then else in is like has permit "
    "forbid when unless".split()
)

Tuple = tuple[str, str, str]


def parse_entity(text: str) -> str:
    """``type:id`` checked: a lowercase type (``user``, ``team``, ``queue``) and an id."""
    kind, sep, ident = text.partition(":")
    if not sep or not ident:
        raise ValueError(f"{text!r} is not an entity: write type:id, as in user:ann")
    if not _TYPE.match(kind) or kind in _RESERVED:
        raise ValueError(
            f"{text!r}: entity types are lowercase words (letters, digits, _), not {kind!r}"
        )
    return text


def parse_tuple(item: str | Sequence[str]) -> Tuple:
    """``"user:ann owner workflow:order-42"`` or ``[left, relation, right]`` checked."""
    parts = item.split() if isinstance(item, str) else list(item)
    if len(parts) != 3 or not all(isinstance(p, str) for p in parts):
        raise ValueError(
            f"{item!r} is not a relation tuple: write 'left relation right', "
            "as in 'user:ann owner workflow:order-42'"
        )
    left, relation, right = parts
    return parse_entity(left), _relation(relation), parse_entity(right)


def principal_entity(subject: str, typed: Iterable[str]) -> str:
    """The entity a subject is: itself when it is ``type:id`` with a type in ``typed``
    (``team:support``), else ``user:<subject>``."""
    kind, sep, _ = subject.partition(":")
    return subject if sep and kind in typed else f"user:{subject}"


def group_entity(name: str, group_type: str) -> str:
    """The entity a group claim names: ``team:ops`` as is, a bare ``ops`` as
    ``<group_type>:ops``."""
    kind, sep, _ = name.partition(":")
    typed = sep and _TYPE.match(kind) and kind not in _RESERVED
    return name if typed else f"{group_type}:{name}"


@dataclass(frozen=True, slots=True)
class RelationPath:
    """A parsed path, stored as the walk from the resource end to the principal end.

    ``hops`` are ``(relation, forward, entity type or None)``: forward follows tuples left
    to right, backward right to left; the type filters the entities reached.
    """

    text: str
    facet: str
    hops: tuple[tuple[str, bool, str | None], ...]


def parse_path(text: str) -> RelationPath:
    words = text.split()
    if len(words) < 3 or len(words) % 2 == 0:
        raise ValueError(
            f"relation {text!r}: write terms and relations in turn, as in "
            "'principal owner resource.workflow' or 'resource.queue managed-by principal'"
        )
    terms, relations = words[0::2], [_relation(r) for r in words[1::2]]
    if terms[0] == "principal":
        terms, relations, forward = terms[::-1], relations[::-1], False
    else:
        forward = True
    start, end, middle = terms[0], terms[-1], terms[1:-1]
    if end != "principal" or not start.startswith("resource."):
        raise ValueError(
            f"relation {text!r}: one end must be 'principal', the other 'resource.<facet>' "
            f"(facets: {', '.join(RESOURCE_FACETS)})"
        )
    facet = start.removeprefix("resource.")
    if facet not in RESOURCE_FACETS:
        raise ValueError(
            f"relation {text!r}: no resource facet {facet!r} (facets: {', '.join(RESOURCE_FACETS)})"
        )
    for term in middle:
        if term != "*" and (not _TYPE.match(term) or term in _RESERVED):
            raise ValueError(f"relation {text!r}: {term!r} is not an entity type or *")
    types = [None if t == "*" else t for t in middle] + [None]
    return RelationPath(
        text, facet, tuple(zip(relations, [forward] * len(relations), types, strict=True))
    )


def _relation(name: str) -> str:
    if not isinstance(name, str) or not _RELATION.match(name):
        raise ValueError(f"{name!r} is not a relation name (lowercase letters, digits, - and _)")
    return _MEMBER_ALIASES.get(name, name)


class RelationGraph:
    """Tuples indexed both ways by (entity, relation), and every entity's groups, closed
    transitively once when the graph is built (policies change far less often than they
    are asked)."""

    def __init__(self, tuples: Iterable[Tuple]) -> None:
        out: dict[tuple[str, str], set[str]] = {}
        into: dict[tuple[str, str], set[str]] = {}
        for left, relation, right in tuples:
            out.setdefault((left, relation), set()).add(right)
            into.setdefault((right, relation), set()).add(left)
        self._out = {k: frozenset(v) for k, v in out.items()}
        self._in = {k: frozenset(v) for k, v in into.items()}
        parents = {left: v for (left, rel), v in self._out.items() if rel == MEMBER}
        self._ancestors = {e: _closure(e, parents) for e in parents}
        self.size = sum(len(v) for v in self._out.values())

    def ancestors(self, entity: str) -> frozenset[str]:
        """Every group ``entity`` is a member of, directly or through other groups."""
        return self._ancestors.get(entity, frozenset())

    def principal_set(self, entity: str, groups: Iterable[str]) -> frozenset[str]:
        """The principal, its claimed groups and every group those are members of."""
        found = {entity, *self.ancestors(entity)}
        for group in groups:
            found.add(group)
            found |= self.ancestors(group)
        return frozenset(found)

    def related(self, entity: str, relation: str, forward: bool) -> frozenset[str]:
        index = self._out if forward else self._in
        return index.get((entity, relation), frozenset())

    def reach(self, path: RelationPath, start: str) -> set[str]:
        """The entities at the principal end of ``path`` walked from ``start``."""
        frontier = {start}
        for relation, forward, kind in path.hops:
            index = self._out if forward else self._in
            step: set[str] = set()
            for entity in frontier:
                step |= index.get((entity, relation), frozenset())
            if kind is not None:
                step = {e for e in step if e.partition(":")[0] == kind}
            if not step:
                return step
            frontier = step
        return frontier

    def witness(self, path: RelationPath, start: str, targets: frozenset[str]) -> list[Tuple]:
        """The tuples of one walk from ``start`` to an entity in ``targets``, as written."""
        trails: dict[str, list[Tuple]] = {start: []}
        for relation, forward, kind in path.hops:
            step: dict[str, list[Tuple]] = {}
            for entity, trail in trails.items():
                for other in sorted(self.related(entity, relation, forward)):
                    if (kind is None or other.partition(":")[0] == kind) and other not in step:
                        edge = (entity, relation, other) if forward else (other, relation, entity)
                        step[other] = [*trail, edge]
            trails = step
        hit = next((e for e in sorted(trails) if e in targets), None)
        return [] if hit is None else trails[hit]

    def membership(self, entity: str, groups: Iterable[str], target: str) -> list[Tuple]:
        """How the principal belongs to ``target``: member tuples from it or a claimed
        group (a claim shows as ``(entity, "member", group)`` first)."""
        starts: list[tuple[str, list[Tuple]]] = [(entity, [])] + [
            (g, [(entity, MEMBER, g)]) for g in groups
        ]
        for origin, prefix in starts:
            chain = self._chain(origin, target)
            if chain is not None:
                return prefix + chain
        return []

    def _chain(self, origin: str, target: str) -> list[Tuple] | None:
        seen: dict[str, list[Tuple]] = {origin: []}
        queue = deque([origin])
        while queue:
            entity = queue.popleft()
            if entity == target:
                return seen[entity]
            for group in sorted(self.related(entity, MEMBER, True)):
                if group not in seen:
                    seen[group] = [*seen[entity], (entity, MEMBER, group)]
                    queue.append(group)
        return None


def _closure(entity: str, parents: Mapping[str, frozenset[str]]) -> frozenset[str]:
    seen: set[str] = set()
    stack = list(parents.get(entity, ()))
    while stack:
        group = stack.pop()
        if group not in seen:
            seen.add(group)
            stack.extend(parents.get(group, ()))
    seen.discard(entity)  # a cycle back to oneself says nothing new
    return frozenset(seen)
