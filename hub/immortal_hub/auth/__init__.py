"""The NATS auth callout service and the server configuration it needs."""

from immortal_hub.auth.nats_jwt import new_account_seed, public_key
from immortal_hub.auth.server_config import APP_ACCOUNT, ServerTls, callout_config
from immortal_hub.auth.service import AuthService

__all__ = [
    "APP_ACCOUNT",
    "AuthService",
    "ServerTls",
    "callout_config",
    "new_account_seed",
    "public_key",
]
