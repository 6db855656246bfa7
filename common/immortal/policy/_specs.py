"""Principals and resources written on a command line (``policy explain``)."""

from __future__ import annotations

import json
from typing import Any

import yaml
from pydantic import ValidationError

from immortal.policy._errors import PolicyError
from immortal.policy._model import RESOURCE_FACETS, PolicyPrincipal, Resource

__all__ = ["parse_input", "parse_principal", "parse_resource"]


def parse_principal(spec: str, *, tenant: str) -> PolicyPrincipal:
    """A subject (``ann``, ``team:support``) or a mapping in YAML or JSON
    (``{subject: ann, roles: [writer], groups: [team:ops]}``)."""
    data = _mapping(spec, "principal") if spec.lstrip().startswith("{") else {"subject": spec}
    data.setdefault("tenant", tenant)
    try:
        return PolicyPrincipal.model_validate(data)
    except ValidationError as e:
        raise PolicyError(f"principal {spec!r}: {_first(e)}") from None


def parse_resource(spec: str, *, tenant: str, input: Any = None) -> Resource:
    """Facets (``queue:payments``, ``workflow:order-42,workflow_type:refund``) or a
    mapping of :class:`Resource` fields in YAML or JSON."""
    if spec.lstrip().startswith("{"):
        data = _mapping(spec, "resource")
    else:
        data = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            kind, sep, ident = part.partition(":")
            if not sep or kind not in RESOURCE_FACETS or not ident:
                raise PolicyError(
                    f"resource {part!r}: write <facet>:<id>, facets {', '.join(RESOURCE_FACETS)}"
                )
            data[RESOURCE_FACETS[kind]] = ident
    data.setdefault("tenant", tenant)
    if input is not None:
        data["input"] = input
    try:
        return Resource.model_validate(data)
    except ValidationError as e:
        raise PolicyError(f"resource {spec!r}: {_first(e)}") from None


def parse_input(text: str) -> dict[str, Any]:
    """A workflow input given as JSON, which must be an object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"input is not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(value, dict):
        raise PolicyError("input must be a JSON object, as rules read input.<field>")
    return value


def _mapping(spec: str, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(spec)
    except yaml.YAMLError as e:
        raise PolicyError(
            f"{what} {spec!r} is not YAML or JSON: {getattr(e, 'problem', e)}"
        ) from None
    if not isinstance(data, dict):
        raise PolicyError(f"{what} {spec!r} is not a mapping")
    return data


def _first(error: ValidationError) -> str:
    err = error.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])
