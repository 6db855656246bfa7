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

__all__ = ["Condition", "ConditionEnv", "Undefined", "format_value", "parse_condition"]

PRINCIPAL_FIELDS = ("subject", "tenant", "roles", "groups", "attributes")
RESOURCE_FIELDS = (
    "tenant", "queue", "workflow_type", "workflow_id", "activity_type", "schedule_id", "status",
    "attributes",
)  # fmt: skip
ROOTS = ("principal", "resource", "input", "context")
_LONG = 2**63


class Undefined(Exception):  # a value, not a failure: the condition has none
    """A condition read a missing name or compared values that do not compare."""


@dataclass(frozen=True, slots=True)
class Path:
    root: str
    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return ".".join((self.root, *self.parts))


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


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
            if not isinstance(value, Mapping) or part not in value:
                raise Undefined(f"{path.text} is missing")
            value = value[part]
        if value is None:
            raise Undefined(f"{path.text} is missing")
        return value


class Condition:
    """A parsed condition: ``holds(env)`` decides, ``explain(env)`` says why."""

    __slots__ = ("node", "paths", "reads_attributes", "text", "volatile")

    def __init__(self, text: str, node: Node) -> None:
        self.text = text
        self.node = node
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
        return bool(_value(self.node, env))

    def explain(self, env: ConditionEnv) -> tuple[bool | None, list[str], dict[str, Any]]:
        """(value or None when undefined, phrases a person reads, the facts it read)."""
        facts: dict[str, Any] = {}
        try:
            value, phrases = _explain(self.node, env, facts)
        except Undefined as why:
            return None, [str(why)], facts
        return bool(value), phrases, facts


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
        return ListOf(tuple(_node(v, text) for v in tree.elts))
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


def _truth(value: Any, node: Node) -> bool:
    if not isinstance(value, bool):
        what = node.text if isinstance(node, Path) else format_value(value)
        raise Undefined(f"{what} is not true or false")
    return value


def _kind(value: Any) -> str:
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
    if isinstance(node, And | Or):
        want = isinstance(node, Or)  # the value that decides: true for or, false for and
        seen: list[str] = []
        for op in node.operands:
            value, phrases = _explain(op, env, facts)
            _truth(value, op)
            if value is want:
                return want, phrases
            seen += phrases
        return not want, seen
    if isinstance(node, Not):
        value, phrases = _explain(node.operand, env, facts)
        return not _truth(value, node.operand), phrases
    if isinstance(node, Compare):
        left, right = _operand(node.left, env, facts), _operand(node.right, env, facts)
        value = _compare_values(node.op, left, right, node)
        return value, [_phrase(node, left, right, value)]
    value = _operand(node, env, facts)
    name = node.text if isinstance(node, Path) else "the condition"
    return value, [f"{name} is {format_value(value)}"]


def _operand(node: Node, env: ConditionEnv, facts: dict[str, Any]) -> Any:
    value = _value(node, env)
    if isinstance(node, Path):
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
    name, subject, other = a.text, _side(a, av), format_value(bv)
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
