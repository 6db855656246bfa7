"""``immortal policy``: a tenant's policy applied, shown, tested and explained.

``apply`` and ``show`` talk to NATS (``apply`` needs the tenant's admin role: the broker
lets only an admin write ``imm-policy``); ``test`` and ``explain`` with ``--policy FILE``
run offline, for CI and for authors; ``explain`` without it asks the stored policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from immortal_hub.cli._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SERVER,
    ConnectTimeout,
    Prefix,
    Server,
    Tenant,
    connect_security,
    with_client,
)

if TYPE_CHECKING:
    from immortal import Client
    from immortal.policy import PolicyDocument, PolicyPrincipal

__all__ = ["app"]

app = typer.Typer(
    add_completion=False,
    help="The tenant's policy: apply, show, test cases, explain a decision (docs/policy.md).",
)

PolicyFile = Annotated[
    Path | None,
    typer.Option("--policy", "-p", help="a policy file (YAML or JSON): decide offline with it"),
]
Engine = Annotated[str, typer.Option(help="the engine: builtin or cedar")]


@app.command("apply")
def policy_apply(
    file: Annotated[Path, typer.Argument(help="the policy document (YAML or JSON)")],
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """Validate FILE and store it as the tenant's policy; every hub decides by it within
    a second. Its version must be newer than the stored one's."""
    from immortal.policy import PolicyError, load_policy, write_policy

    document = load_policy(file)  # a PolicyError names the file, the line and the rule

    async def store(client: Client) -> None:
        if document.tenant != client.tenant:
            raise PolicyError(
                f"{file} is tenant {document.tenant!r}'s policy; this connection is tenant "
                f"{client.tenant!r}'s"
            )
        stored = await write_policy(await _policy_kv(client), document)
        rules, tuples = len(document.rules), len(document.relations)
        print(
            f"applied policy v{document.version} of tenant {document.tenant}: {rules} rules, "
            f"{tuples} relation tuples (revision {stored.revision})"
        )

    with_client(server, tenant, prefix, connect_timeout, store)


@app.command("show")
def policy_show(
    as_json: Annotated[bool, typer.Option("--json", help="the stored document as JSON")] = False,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """The tenant's stored policy: version, when applied, its rules and relations."""
    from immortal.policy import read_policy, render_policy

    async def show(client: Client) -> None:
        stored = await read_policy(await _policy_kv(client), client.tenant)
        if stored is None:
            print(
                f"none: tenant {client.tenant!r} has no policy (its roles decide, docs/security.md)"
            )
            return
        if as_json:
            print(json.dumps(stored.document.model_dump(mode="json"), indent=2))
            return
        print(f"applied {_when(stored.applied_at)} (revision {stored.revision})")
        print(render_policy(stored.document))

    with_client(server, tenant, prefix, connect_timeout, show)


@app.command("test")
def policy_test(
    file: Annotated[Path, typer.Argument(help="a case file (docs/policy.md, 'Case files')")],
    policy: PolicyFile = None,
    engine: Engine = "builtin",
) -> None:
    """Decide every case of FILE (with the policy it names, or --policy); exit 1 naming
    each case that decided otherwise than expected."""
    from immortal.policy import PolicyError, load_cases, load_policy, make_engine, run_cases

    suite = load_cases(file)
    document = load_policy(policy) if policy is not None else suite.policy
    if document is None:
        raise PolicyError(f"{file} names no policy: add 'policy: FILE' to it or give --policy")
    report = run_cases(suite, make_engine(document, engine), tenant=document.tenant)
    print(report)
    if not report.ok:
        raise typer.Exit(1)


@app.command("explain")
def policy_explain(
    action: Annotated[str, typer.Option(help="e.g. workflow.start")],
    resource: Annotated[
        str, typer.Option(help="facets (queue:payments,workflow_type:refund) or YAML/JSON")
    ],
    principal: Annotated[
        str | None, typer.Option(help="a subject, or {subject: ann, roles: [writer], ...}")
    ] = None,
    as_token: Annotated[
        str | None,
        typer.Option("--as", help="the principal a token claims (read, not verified)"),
    ] = None,
    input_: Annotated[
        str | None, typer.Option("--input", help="the workflow's input as JSON")
    ] = None,
    policy: PolicyFile = None,
    server: Server = DEFAULT_SERVER,
    tenant: Tenant = "default",
    prefix: Prefix = "imm",
    connect_timeout: ConnectTimeout = DEFAULT_CONNECT_TIMEOUT,
) -> None:
    """The decision for one request, its reason, and every rule that covers the action
    with why it applied or not (the stored policy, or --policy offline)."""
    from immortal.policy import PolicyError, load_policy

    if (principal is None) == (as_token is None):
        raise typer.BadParameter("give --principal or --as TOKEN (one of them)")
    if policy is not None:
        document = load_policy(policy)
        print(_explained(document, principal, as_token, action, resource, input_))
        return

    async def explain(client: Client) -> None:
        from immortal.policy import read_policy

        stored = await read_policy(await _policy_kv(client), client.tenant)
        if stored is None:
            raise PolicyError(
                f"tenant {client.tenant!r} has no policy: its roles decide (docs/security.md)"
            )
        print(_explained(stored.document, principal, as_token, action, resource, input_))

    with_client(server, tenant, prefix, connect_timeout, explain)


def _explained(
    document: PolicyDocument,
    principal: str | None,
    token: str | None,
    action: str,
    resource: str,
    input_: str | None,
) -> str:
    from immortal.policy import BuiltinEngine, parse_input, parse_resource, render_explanation

    who = _principal(document.tenant, principal, token)
    fields = parse_input(input_) if input_ is not None else None
    what = parse_resource(resource, tenant=document.tenant, input=fields)
    return render_explanation(BuiltinEngine(document).explain(who, action, what))


def _principal(tenant: str, spec: str | None, token: str | None) -> PolicyPrincipal:
    from immortal.policy import PolicyPrincipal, parse_principal

    if spec is not None:
        return parse_principal(spec, tenant=tenant)
    from immortal.security.claims import unverified_principal

    assert token is not None
    claimed = unverified_principal(_token_text(token))
    return PolicyPrincipal(
        subject=claimed.subject,
        tenant=claimed.tenant,
        roles=tuple(sorted(claimed.roles)),
        groups=tuple(sorted(claimed.groups)),
        attributes=dict(claimed.attributes),
    )


def _token_text(value: str) -> str:
    """``--as`` takes a token, ``@FILE`` holding one, or ``-`` for the one this command
    connects with ($IMMORTAL_TOKEN)."""
    if value == "-":
        security = connect_security()
        if security is None or security.token is None:
            raise typer.BadParameter("--as -: no token is set ($IMMORTAL_TOKEN or --token)")
        return security.token()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from None
    return value


async def _policy_kv(client: Client) -> Any:
    from immortal._transient import key_value

    return await key_value(client.nc.jetstream(), client.names.bucket_policy)


def _when(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
