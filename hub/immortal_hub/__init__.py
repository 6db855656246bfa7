"""The Immortal hub: routes inputs, appends history, emits tasks.

The names load on first use: ``immortal_hub.cli`` lives in this package, and a read
command (``immortal workflow describe``) should not pay for importing the hub.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from immortal_hub._hub import Hub
    from immortal_hub._limits import TenantLimits, parse_tenant_limit
    from immortal_hub._resources import ResourceSettings, ensure_resources

__all__ = ["Hub", "ResourceSettings", "TenantLimits", "ensure_resources", "parse_tenant_limit"]

_HOMES = {
    "Hub": "immortal_hub._hub",
    "ResourceSettings": "immortal_hub._resources",
    "TenantLimits": "immortal_hub._limits",
    "ensure_resources": "immortal_hub._resources",
    "parse_tenant_limit": "immortal_hub._limits",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'immortal_hub' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
