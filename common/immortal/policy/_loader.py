"""Policy files (YAML or JSON) read into a :class:`PolicyDocument`, with errors that name
the line and the rule."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from immortal.policy._document import PolicyDocument, Rule
from immortal.policy._errors import PolicyError

__all__ = ["load_policy", "parse_policy", "read_data", "validate"]

M = TypeVar("M", bound=BaseModel)
Locate = Callable[[Sequence[int | str]], int | None]


def load_policy(path: str | Path) -> PolicyDocument:
    """Read and check a policy file; :class:`PolicyError` names the line and the rule.

    >>> doc = load_policy("policy.yaml")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(f"cannot read the policy file: {e.strerror}", source=str(path)) from None
    return parse_policy(text, source=str(path))


def parse_policy(text: str, *, source: str = "<policy>") -> PolicyDocument:
    """Check a policy given as YAML or JSON text (JSON when ``source`` ends in .json)."""
    data, locate = read_data(text, source=source)
    return validate(PolicyDocument, data, locate=locate, source=source)


def read_data(text: str, *, source: str) -> tuple[Any, Locate]:
    """Parse YAML (or JSON, by ``source``'s suffix) and a function from a location in
    the data, such as ``("rules", 3, "when")``, to its line."""
    if source.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"not valid JSON: {e.msg}", source=source, line=e.lineno) from None

        def locate(loc: Sequence[int | str]) -> int | None:
            try:  # JSON is YAML too; lines are only needed once something is wrong
                return _line_of(yaml.load(text, Loader=_LineLoader), loc)
            except (yaml.YAMLError, PolicyError):
                return None

        return data, locate
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except PolicyError as e:
        raise PolicyError(e.problem, source=source, line=e.line) from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        problem = e.problem or e.context or "cannot parse"
        raise PolicyError(f"not valid YAML: {problem}", source=source, line=line) from None
    except yaml.YAMLError as e:
        raise PolicyError(f"not valid YAML: {e}", source=source) from None
    return raw, lambda loc: _line_of(raw, loc)


def validate(model: type[M], data: Any, *, locate: Locate, source: str) -> M:
    """``model`` from ``data``, or the first problem (the rest in ``.more``) as a
    :class:`PolicyError` at its line."""
    if not isinstance(data, dict):
        raise PolicyError(f"expected a mapping at the top, found {_kind(data)}", source=source)
    _check_unique_rule_ids(data, locate, source)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [_error(err, data, model, locate, source) for err in e.errors()]
        first = errors[0]
        first.more = tuple(errors[1:])
        raise first from None


# -- YAML with lines -------------------------------------------------------------------


class _Map(dict[Any, Any]):
    line: int = 0
    key_lines: dict[Any, int]


class _Seq(list[Any]):
    line: int = 0
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """The safe loader, remembering the line of every key and item."""


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    data = _Map()
    data.line, data.key_lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in data
        except TypeError:
            raise PolicyError("a key must be a plain value", line=line) from None
        if duplicate:
            raise PolicyError(f"key {key!r} appears twice in one mapping", line=line)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = line
    return data


def _construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _Seq:
    data = _Seq(loader.construct_object(item, deep=True) for item in node.value)
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    return data


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _line_of(raw: Any, loc: Sequence[int | str]) -> int | None:
    line: int | None = getattr(raw, "line", None)
    node = raw
    for part in loc:
        if isinstance(node, _Map) and part in node:
            line, node = node.key_lines[part], node[part]
        elif isinstance(node, _Seq) and isinstance(part, int) and 0 <= part < len(node):
            line, node = node.item_lines[part], node[part]
        else:
            break
    return line


# -- errors ----------------------------------------------------------------------------


def _check_unique_rule_ids(data: dict[str, Any], locate: Locate, source: str) -> None:
    rules = data.get("rules")
    if not isinstance(rules, list):
        return
    first_at: dict[str, int] = {}
    for i, rule in enumerate(rules):
        rule_id = rule.get("id") if isinstance(rule, dict) else None
        if not isinstance(rule_id, str):
            continue
        if rule_id in first_at:
            earlier = locate(("rules", first_at[rule_id], "id"))
            where = f" (first at line {earlier})" if earlier else ""
            raise PolicyError(
                f"rule id {rule_id!r} is used twice{where}",
                source=source,
                line=locate(("rules", i, "id")),
                rule=rule_id,
            )
        first_at[rule_id] = i


def _error(
    err: Any, data: dict[str, Any], model: type[BaseModel], locate: Locate, source: str
) -> PolicyError:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    list_name, item = _item_at(data, loc)
    inner = loc[2:] if item is not None else loc  # the location inside the rule or case
    fields = [str(p) for p in inner if isinstance(p, str)]
    label = ".".join(fields) or "the document"
    kind, msg = err["type"], str(err["msg"])
    if kind == "missing":
        problem = f"missing field {fields[-1]!r}" if fields else "missing field"
    elif kind == "extra_forbidden":
        known = (Rule if list_name == "rules" else model).model_fields
        close = difflib.get_close_matches(fields[-1], list(known), n=1) if fields else []
        hint = f" (did you mean {close[0]!r}?)" if close else f" (fields: {', '.join(known)})"
        problem = f"unknown field {fields[-1]!r}{hint}"
    elif kind == "value_error":
        problem = f"{label}: {msg.removeprefix('Value error, ')}"
    else:
        problem = f"{label}: {msg[0].lower() + msg[1:]}" if msg else label
    if list_name == "cases" and item is not None:
        problem = f"case {item!r}: {problem}"
    rule = item if list_name == "rules" else None
    return PolicyError(problem, source=source, line=locate(loc), rule=rule)


def _item_at(data: dict[str, Any], loc: tuple[int | str, ...]) -> tuple[str | None, str | None]:
    """("rules", its id) or ("cases", its name) when ``loc`` is inside one."""
    if len(loc) < 2 or loc[0] not in ("rules", "cases") or not isinstance(loc[1], int):
        return None, None
    items = data.get(str(loc[0]))
    item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
    name = item.get("id" if loc[0] == "rules" else "name") if isinstance(item, dict) else None
    return str(loc[0]), name if isinstance(name, str) else f"#{loc[1] + 1}"


def _kind(data: Any) -> str:
    if isinstance(data, list):
        return "a list"
    if isinstance(data, str):
        return "a string"
    return "nothing" if data is None else type(data).__name__
