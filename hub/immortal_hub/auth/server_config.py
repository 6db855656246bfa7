"""The nats-server configuration that puts the auth service in front of every connection.

One application account holds Immortal's streams; the auth service's own user (and, if
given, the hub's) bypasses the callout (``auth_users``); everyone else is sent to the
service, which answers with a user JWT scoped to one tenant and role. Found by experiment
against nats-server 2.15: the callout account may be the application account itself.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServerTls", "callout_config"]

APP_ACCOUNT = "IMM"


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate, and the CA client certificates must chain to (mTLS)."""

    cert: str
    key: str
    ca: str | None = None
    verify: bool = True  # clients must present a certificate signed by ``ca``

    def block(self) -> str:
        lines = [f'  cert_file: "{self.cert}"', f'  key_file: "{self.key}"']
        if self.ca:
            lines.append(f'  ca_file: "{self.ca}"')
        if self.verify and self.ca:
            lines.append("  verify: true")
        lines.append("  timeout: 2")
        return "tls {\n" + "\n".join(lines) + "\n}\n"


def callout_config(
    issuer: str,
    *,
    service_user: str,
    service_password: str,
    account: str = APP_ACCOUNT,
    tls: ServerTls | None = None,
    timeout: float = 2.0,
) -> str:
    """Config text to add to a JetStream server's config: ``issuer`` is the public account
    key (``A...``) the service signs with; ``service_password`` may be a bcrypt hash."""
    return (
        "accounts {\n"
        f"  {account}: {{\n"
        "    jetstream: enabled\n"
        f'    users: [ {{ user: "{service_user}", password: "{service_password}" }} ]\n'
        "  }\n"
        "}\n"
        "authorization {\n"
        f"  timeout: {timeout:g}\n"
        "  auth_callout {\n"
        f"    issuer: {issuer}\n"
        f'    auth_users: [ "{service_user}" ]\n'
        f"    account: {account}\n"
        "  }\n"
        "}\n"
        # OIDC tokens are long: leave room for them in CONNECT.
        "max_control_line: 16KB\n" + (tls.block() if tls else "")
    )
