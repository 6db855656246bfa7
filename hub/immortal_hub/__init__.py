"""The Immortal hub: routes inputs, appends history, emits tasks."""

from immortal_hub._hub import Hub
from immortal_hub._limits import TenantLimits, parse_tenant_limit
from immortal_hub._resources import ResourceSettings, ensure_resources

__all__ = ["Hub", "ResourceSettings", "TenantLimits", "ensure_resources", "parse_tenant_limit"]
