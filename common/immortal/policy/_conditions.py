"""The condition language of ABAC rules: comparisons of facts, parsed, never evaluated.

A condition is a boolean expression in Python's syntax, restricted to what a policy needs::

    input.amount <= 10_000 and context.weekday in ["mon", "tue", "wed", "thu", "fri"]
    9 <= context.hour < 18
    "finance" in principal.groups or resource.status == "running"
    not (principal.attributes.clearance < 3)

Names start at ``principal``, ``resource``, ``input`` or ``context``; values are numbers,
strings, ``true``/``false`` and lists of those. Operators: ``== != < <= > >= in not in``,
``and or not`` and parentheses. Python's parser reads the text (so errors carry a column)
and this module walks the tree it returns; nothing is ever passed to ``eval``.

A name that is missing (or null), and an order comparison of anything but two numbers,
make the whole condition *undefined*: the rule then does not apply, whatever ``not`` or
the rule's effect. Cedar behaves the same way, so both engines decide alike.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "Condition", "ConditionEnv", "InputUnreadable", "Undefined", "format_value", "parse_condition",
]  # fmt: skip

PRINCIPAL_FIELDS = ("subject", "tenant", "roles", "groups", "attributes")
RESOURCE_FIELDS = (
    "tenant", "queue", "workflow_type", "workflow_id", "activity_type", "schedule_id", "status",
    "attributes",
)  # fmt: skip
ROOTS = ("principal", "resource", "input", "context")
_LONG = 2**63


class Undefined(Exception):  # a value, not a failure: the condition has none
    """A condition read a missing name or compared values that do not compare."""


class InputUnreadable(Undefined):
    """A condition read an input field of a request whose input cannot be read (it is
    encrypted, say): unlike a missing field, the engines refuse rather than skip it."""


@dataclass(frozen=True, slots=True)
class Path:
    root: str
    parts: tuple[str, ...]
    text: str = ""  # "input.amount", joined once

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", ".".join((self.root, *self.parts)))


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any
    shown: str = ""  # the value as a reason writes it, once

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown", format_value(self.value))


@dataclass(frozen=True, slots=True)
class ListOf:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Node
    right: Node


Node = Union[Path, Literal, ListOf, Not, And, Or, Compare]  # noqa: UP007 - a runtime alias


class ConditionEnv:
    """The facts a condition reads: one request's principal, resource, input and context."""

    __slots__ = ("_context", "_context_fields", "principal", "resource")

    def __init__(
        self,
        principal: Any,
        resource: Any,
        context_fields: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.principal = principal
        self.resource = resource
        self._context_fields = context_fields
        self._context: Mapping[str, Any] | None = None

    def lookup(self, path: Path) -> Any:
        root, parts = path.root, path.parts
        if root == "input":
            value: Any = self.resource.input
            why = getattr(self.resource, "input_unreadable", None)  # any resource-like
            if why is not None and (not isinstance(value, Mapping) or parts[0] not in value):
                raise InputUnreadable(f"{path.text} cannot be read: {why}")
        elif root == "context":
            if self._context is None:
                self._context = self._context_fields()
            value = self._context
        else:
            obj = self.principal if root == "principal" else self.resource
            value = getattr(obj, parts[0])
            if parts[0] in ("roles", "groups"):
                value = list(value)
            parts = parts[1:]
        for part in parts:
            # type() first: isinstance against an ABC is slow, and inputs are dicts
            if not (type(value) is dict or isinstance(value, Mapping)) or part not in value:
                raise Undefined(f"{path.text} is missing")
            value = value[part]
        if value is None:
            raise Undefined(f"{path.text} is missing")
        return value


class Condition:
    """A parsed condition: ``holds(env)`` decides, ``explain(env)`` says why."""

    __slots__ = ("_holds", "node", "paths", "reads_attributes", "text", "volatile")

    def __init__(self, text: str, node: Node) -> None:
        self.text = text
        self.node = node
        self._holds = _compiled(node)
        self.paths = frozenset(_paths(node))
        # Input and time differ on every request: a decision that read them is not cached.
        self.volatile = any(p.root in ("input", "context") for p in self.paths)
        self.reads_attributes = {
            p.root
            for p in self.paths
            if p.root in ("principal", "resource") and p.parts[0] == "attributes"
        }

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def holds(self, env: ConditionEnv) -> bool:
        """Whether the condition is true; :class:`Undefined` when it has no value."""
        return _truth(self._holds(env), self.node)

    def explain(self, env: ConditionEnv) -> tuple[bool | None, list[str], dict[str, Any]]:
        """(value or None when undefined, phrases a person reads, the facts it read)."""
        facts: dict[str, Any] = {}
        try:
            value, phrases = _explain(self.node, env, facts)
            return _truth(value, self.node), phrases, facts
        except Undefined as why:
            return None, [str(why)], facts


def parse_condition(text: str) -> Condition:
    """Parse ``text``; ``ValueError`` says what is wrong and at which column."""
    if not text.strip():
        raise ValueError("the condition is empty")
    try:
        tree = ast.parse(f"({text})", mode="eval")
    except SyntaxError as e:
        column = max((e.offset or 1) - 1, 1)
        raise ValueError(f"cannot read condition {text!r} at column {column}: {e.msg}") from None
    return Condition(text, _node(tree.body, text))


def format_value(value: Any) -> str:
    """A value as a reason shows it: ``12,000``, ``'running'``, ``['a', 'b']``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.10g}" if abs(value) < 1e15 else repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


# -- parsing ---------------------------------------------------------------------------

_OPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.In: "in", ast.NotIn: "not in",
}  # fmt: skip


def _node(tree: ast.expr, text: str) -> Node:
    if isinstance(tree, ast.BoolOp):
        operands = tuple(_node(v, text) for v in tree.values)
        return And(operands) if isinstance(tree.op, ast.And) else Or(operands)
    if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.Not):
        return Not(_node(tree.operand, text))
    if isinstance(tree, ast.Compare):
        return _compare(tree, text)
    if isinstance(tree, ast.Attribute | ast.Subscript | ast.Name):
        return _path_or_name(tree, text)
    if isinstance(tree, ast.List | ast.Tuple):
        items = tuple(_node(v, text) for v in tree.elts)
        if all(isinstance(i, Literal) for i in items):  # a constant list: build it once
            return Literal([i.value for i in items if isinstance(i, Literal)])
        return ListOf(items)
    if isinstance(tree, ast.Constant) or (
        isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub | ast.UAdd)
    ):
        return Literal(_constant(tree, text))
    raise _unsupported(tree, text)


def _compare(tree: ast.Compare, text: str) -> Node:
    # ``9 <= context.hour < 18`` is two comparisons sharing the middle operand.
    left = _node(tree.left, text)
    parts: list[Node] = []
    for op, right_tree in zip(tree.ops, tree.comparators, strict=True):
        if type(op) not in _OPS:
            raise _unsupported(tree, text, f"the operator {type(op).__name__!r}")
        right = _node(right_tree, text)
        parts.append(Compare(_OPS[type(op)], left, right))
        left = right
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _path_or_name(tree: ast.expr, text: str) -> Node:
    parts: list[str] = []
    node = tree
    while not isinstance(node, ast.Name):
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            parts.append(node.slice.value)  # input["first-name"]: keys that are not names
            node = node.value
        else:
            raise _unsupported(node, text)
    if not parts and node.id in ("true", "false"):
        return Literal(node.id == "true")
    return _checked_path(node.id, tuple(reversed(parts)), text)


def _checked_path(root: str, parts: tuple[str, ...], text: str) -> Path:
    path = Path(root, parts)
    if root not in ROOTS:
        raise ValueError(
            f"condition {text!r}: unknown name {path.text!r}; names start with "
            + ", ".join(f"{r}." for r in ROOTS)
        )
    if not parts:
        raise ValueError(f"condition {text!r}: {root!r} needs a field, as in {root}.<name>")
    fields = {"principal": PRINCIPAL_FIELDS, "resource": RESOURCE_FIELDS}.get(root)
    if fields is not None:
        if parts[0] not in fields:
            raise ValueError(
                f"condition {text!r}: {root} has no field {parts[0]!r}{_suggest(parts[0], fields)}"
            )
        if (parts[0] == "attributes") != (len(parts) > 1):
            hint = f"{root}.attributes.<name>" if parts[0] == "attributes" else f"{root}.{parts[0]}"
            raise ValueError(f"condition {text!r}: write {hint}, not {path.text!r}")
    return path


def _constant(tree: ast.expr, text: str) -> Any:
    sign = 1
    if isinstance(tree, ast.UnaryOp):
        sign = -1 if isinstance(tree.op, ast.USub) else 1
        tree = tree.operand
    if not isinstance(tree, ast.Constant):
        raise _unsupported(tree, text)
    value = tree.value
    if isinstance(value, bool) and sign == 1:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and abs(value) >= _LONG:
            raise ValueError(f"condition {text!r}: {value} is too large a number")
        return sign * value
    if isinstance(value, str) and sign == 1:
        return value
    raise _unsupported(tree, text, f"the value {value!r}")


def _unsupported(tree: ast.AST, text: str, what: str | None = None) -> ValueError:
    col = max(getattr(tree, "col_offset", 1), 1)  # the text was wrapped in "(" for parsing
    what = what or {
        "Call": "a function call",
        "BinOp": "arithmetic",
        "Subscript": "an index other than a quoted key",
        "Dict": "a mapping",
        "IfExp": "'if'",
        "Lambda": "'lambda'",
    }.get(type(tree).__name__, f"{type(tree).__name__} expressions")
    return ValueError(f"condition {text!r} at column {col}: {what} is not allowed in a condition")


def _suggest(word: str, options: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (fields: {', '.join(options)})"


def _paths(node: Node) -> list[Path]:
    if isinstance(node, Path):
        return [node]
    if isinstance(node, Literal):
        return []
    if isinstance(node, ListOf):
        return [p for item in node.items for p in _paths(item)]
    if isinstance(node, Not):
        return _paths(node.operand)
    if isinstance(node, Compare):
        return _paths(node.left) + _paths(node.right)
    return [p for op in node.operands for p in _paths(op)]


# -- evaluation ------------------------------------------------------------------------


def _value(node: Node, env: ConditionEnv) -> Any:
    if isinstance(node, Compare):
        return _compare_values(node.op, _value(node.left, env), _value(node.right, env), node)
    if isinstance(node, Path):
        return env.lookup(node)
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, And):
        return all(_truth(_value(op, env), op) for op in node.operands)
    if isinstance(node, Or):
        return any(_truth(_value(op, env), op) for op in node.operands)
    if isinstance(node, Not):
        return not _truth(_value(node.operand, env), node.operand)
    return [_value(item, env) for item in node.items]


# -- the same, compiled into closures once, for decisions -------------------------------

Eval = Callable[[ConditionEnv], Any]
_NUMBER = (int, float)


def _compiled(node: Node) -> Eval:
    """``node`` as nested closures: what ``_value`` does, without dispatching on the node
    type at every step (a decision evaluates conditions; only reasons need the tree)."""
    if isinstance(node, Path):
        return lambda env: env.lookup(node)
    if isinstance(node, Literal):
        value = node.value
        return lambda env: value
    if isinstance(node, ListOf):
        items = [_compiled(item) for item in node.items]
        return lambda env: [item(env) for item in items]
    if isinstance(node, Not):
        inner, operand = _compiled(node.operand), node.operand
        return lambda env: not _truth(inner(env), operand)
    if isinstance(node, And | Or):
        parts = [(_compiled(op), op) for op in node.operands]
        if isinstance(node, And):
            return lambda env: all(_truth(f(env), op) for f, op in parts)
        return lambda env: any(_truth(f(env), op) for f, op in parts)
    return _compiled_compare(node)


def _compiled_compare(node: Compare) -> Eval:
    left, right, op = _compiled(node.left), _compiled(node.right), node.op
    order = {"<": _lt, "<=": _le, ">": _gt, ">=": _ge}.get(op)
    if order is not None:

        def ordered(env: ConditionEnv) -> bool:
            a, b = left(env), right(env)
            if type(a) in _NUMBER and type(b) in _NUMBER:  # exact types: bool is not a number
                return order(a, b)
            return _compare_values(op, a, b, node)

        return ordered
    if (
        op in ("in", "not in")
        and isinstance(node.right, Literal)
        and _kind(node.right.value) == "set"
    ):
        members = _members(node.right.value)
        if members is not None:
            inside = op == "in"

            def member(env: ConditionEnv) -> bool:
                value = left(env)
                kind = _KINDS.get(type(value))
                if kind in ("bool", "number", "string"):
                    return ((kind, value) in members) is inside
                return _compare_values(op, value, node.right.value, node)  # type: ignore[union-attr]

            return member
    return lambda env: _compare_values(op, left(env), right(env), node)


def _members(values: Any) -> frozenset[tuple[str, Any]] | None:
    """A constant list of plain values as a set of (kind, value): ``in`` becomes a lookup.
    The kind keeps ``true`` apart from ``1``, as the comparison does."""
    kinds = [_KINDS.get(type(v)) for v in values]
    if not all(k in ("bool", "number", "string") for k in kinds):
        return None
    return frozenset(zip(kinds, values, strict=True))  # type: ignore[arg-type]


def _lt(a: Any, b: Any) -> bool:
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return bool(a <= b)


def _gt(a: Any, b: Any) -> bool:
    return bool(a > b)


def _ge(a: Any, b: Any) -> bool:
    return bool(a >= b)


def _truth(value: Any, node: Node) -> bool:
    if not isinstance(value, bool):
        what = node.text if isinstance(node, Path) else format_value(value)
        raise Undefined(f"{what} is not true or false")
    return value


_KINDS = {
    bool: "bool", int: "number", float: "number", str: "string", list: "set", tuple: "set",
    set: "set", frozenset: "set", dict: "record",
}  # fmt: skip


def _kind(value: Any) -> str:
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple | set | frozenset):
        return "set"
    if isinstance(value, Mapping):
        return "record"
    return type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    kind = _kind(a)
    if kind != _kind(b):
        return False
    if kind == "set":  # lists compare as sets, as Cedar's do
        return all(any(_equal(x, y) for y in b) for x in a) and all(
            any(_equal(x, y) for x in a) for y in b
        )
    if kind == "record":
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _compare_values(op: str, left: Any, right: Any, node: Compare) -> bool:
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in ("in", "not in"):
        if _kind(right) != "set":
            raise Undefined(f"{_side(node.right, right)} is not a list")
        found = any(_equal(left, item) for item in right)
        return found if op == "in" else not found
    if _kind(left) != "number" or _kind(right) != "number":
        bad = (node.left, left) if _kind(left) != "number" else (node.right, right)
        raise Undefined(f"{_side(*bad)} is not a number")
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _side(node: Node, value: Any) -> str:
    return f"{node.text} {format_value(value)}" if isinstance(node, Path) else format_value(value)


# -- explanation -----------------------------------------------------------------------

_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _explain(node: Node, env: ConditionEnv, facts: dict[str, Any]) -> tuple[Any, list[str]]:
    kind = type(node)
    if kind is Compare:
        assert isinstance(node, Compare)
        left, right = _operand(node.left, env, facts), _operand(node.right, env, facts)
        value = _compare_values(node.op, left, right, node)
        return value, [_phrase(node, left, right, value)]
    if kind is And or kind is Or:
        assert isinstance(node, And | Or)
        want = kind is Or  # the value that decides: true for or, false for and
        seen: list[str] = []
        for op in node.operands:
            value, phrases = _explain(op, env, facts)
            _truth(value, op)
            if value is want:
                return want, phrases
            seen += phrases
        return not want, seen
    if kind is Not:
        assert isinstance(node, Not)
        value, phrases = _explain(node.operand, env, facts)
        return not _truth(value, node.operand), phrases
    value = _operand(node, env, facts)
    name = node.text if isinstance(node, Path) else "the condition"
    return value, [f"{name} is {format_value(value)}"]


def _operand(node: Node, env: ConditionEnv, facts: dict[str, Any]) -> Any:
    if type(node) is Literal:
        return node.value
    value = _value(node, env)
    if type(node) is Path:
        facts[node.text] = value
    return value


def _phrase(node: Compare, left: Any, right: Any, value: bool) -> str:
    op, a, b, av, bv = node.op, node.left, node.right, left, right
    if op in _MIRROR and not isinstance(a, Path) and isinstance(b, Path):
        op, a, b, av, bv = _MIRROR[op], b, a, bv, av  # say "input.amount ..." first
    if op in ("in", "not in") and isinstance(b, Path) and not isinstance(a, Path):
        inside = value if op == "in" else not value
        return f"{b.text} {'includes' if inside else 'does not include'} {format_value(av)}"
    if not isinstance(a, Path) or isinstance(b, Path):
        holds = "holds" if value else "does not hold"
        return f"{_side(a, av)} {op} {_side(b, bv)} {holds}"
    name, subject = a.text, _side(a, av)
    other = b.shown if isinstance(b, Literal) else format_value(bv)
    if op in ("==", "!="):
        same = value if op == "==" else not value
        return f"{name} is {format_value(av)}" + ("" if same else f", not {other}")
    if op in ("in", "not in"):
        inside = value if op == "in" else not value
        return f"{subject} is {'one' if inside else 'none'} of {other}"
    return {
        (">", True): f"{subject} exceeds the {other} limit",
        (">", False): f"{subject} is within the {other} limit",
        (">=", True): f"{subject} is at or above {other}",
        (">=", False): f"{subject} is below {other}",
        ("<", True): f"{subject} is below {other}",
        ("<", False): f"{subject} is at or above {other}",
        ("<=", True): f"{subject} is within the {other} limit",
        ("<=", False): f"{subject} exceeds the {other} limit",
    }[op, value]
