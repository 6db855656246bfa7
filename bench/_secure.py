"""``python -m bench -w throughput -w latency --secure``: the same workloads again on a
server with auth on (the NATS auth callout, tokens for the hubs, workers and the client),
in the same run, and what auth costs: the share of throughput kept and the latency added.
Tokens are verified at CONNECT only (cached); nothing is verified per message.

``--policy`` adds a third pass: auth on and a tenant policy (``BENCH_POLICY``, or the
file given) stored before the workloads, so every start and every activity task is
decided by the hub and logged to ``IMM_AUDIT``; ``compare`` reports its share of the
auth-on throughput and of the auth-off one.

``--signing`` adds signed inputs to the second pass: the tenant's registry holds a key for
the client and one for the workers, so its hubs require and check a signature on every
input (and store each request's nonce)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import Cost, cost
from immortal._names import Names
from immortal.security import ConnectSecurity
from immortal.security.keys import KeyRegistry, RegisteredKey, registry_key
from immortal.security.signing import Signer, SigningKey
from immortal.testing import NatsServer
from immortal_hub.auth import AuthService, callout_config, new_account_seed, public_key
from immortal_hub.auth.local import LocalIssuer

SERVICE_USER = "immortal-auth"
SUFFIX = " [auth on]"
POLICY_SUFFIX = " [auth + policy]"
SIGNING_SUFFIX = " [auth+signing on]"
TENANT = "default"

# What a tenant might write: its writers start, signal and read; activities are covered
# (so each task is decided); and enough other rules that the index has work to do.
BENCH_POLICY = """
tenant: default
version: 1
relations:
  - queue:default managed-by team:ops
rules:
  - id: r-writers
    effect: allow
    roles: [writer]
    actions: [workflow.*, logs.read]
  - id: r-activities
    effect: allow
    roles: [writer]
    actions: [activity.run]
  - id: r-no-payouts
    effect: deny
    actions: [activity.run]
    resources: {activity_type: "payout*"}
  - id: r-ops
    effect: allow
    relation: resource.queue managed-by principal
    actions: [workflow.*]
""" + "".join(
    f"""  - id: r-filler-{i}
    effect: allow
    groups: [team-{i}]
    actions: [workflow.start]
    resources: {{workflow_type: "type-{i}-*"}}
"""
    for i in range(200)
)


@dataclass
class Secure:
    server: NatsServer
    client: ConnectSecurity
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # "hub"/"worker" -> env
    admin: dict[str, Any] = field(default_factory=dict)  # nats.connect options, all rights
    suffix: str = SUFFIX  # of the metrics of this pass


@asynccontextmanager
async def secure_server(
    tmp: Path, *, policy: str | None = None, signing: bool = False
) -> AsyncIterator[Secure]:
    """A server with auth on; with ``policy`` (a document's text), stored for its tenant;
    with ``signing``, a key registry for it and signing keys for the client and workers."""
    issuer = LocalIssuer()
    seed, password = new_account_seed(), secrets.token_urlsafe(18)
    server = NatsServer(
        store_dir=tmp / "nats-secure",
        extra_config=callout_config(
            public_key(seed), service_user=SERVICE_USER, service_password=password
        ),
    )
    await server.start()
    service = AuthService(
        server.url,
        config=issuer.config(),
        issuer_seed=seed,
        user=SERVICE_USER,
        password=password,
    )
    await service.start()
    admin = {"user": SERVICE_USER, "password": password}
    if policy is not None:
        await _store_policy(server.url, policy, admin)
    worker_env = {
        "IMMORTAL_TOKEN": issuer.token("bench-worker", ["default:worker"], queues=["default"])
    }
    signer = None
    if signing:
        client_key, worker_key = SigningKey.generate("client-1"), SigningKey.generate("worker-1")
        await _register(server.url, admin, [client_key, worker_key])
        signer = Signer([client_key])
        worker_env["IMMORTAL_SIGNING_KEY"] = f"worker-1:{worker_key.to_json()['seed']}"
    try:
        yield Secure(
            server=server,
            client=ConnectSecurity.with_token(
                issuer.token("bench-client", ["default:writer"]), signer=signer
            ),
            env={
                "hub": {"IMMORTAL_TOKEN": issuer.token("bench-hub", ["immortal-system:hub"])},
                "worker": worker_env,
            },
            admin=admin,
            suffix=SIGNING_SUFFIX if signing else SUFFIX,
        )
    finally:
        await service.stop()
        await server.close()
        issuer.close()


async def _store_policy(url: str, text: str, admin: dict[str, Any]) -> None:
    import nats

    from immortal._names import Names
    from immortal.policy import parse_policy, write_policy
    from immortal_hub._resources import ResourceSettings, ensure_resources

    nc = await nats.connect(url, **admin)
    try:
        js = nc.jetstream()
        await ensure_resources(js, Names("imm"), ResourceSettings())
        await write_policy(await js.key_value(Names("imm").bucket_policy), parse_policy(text))
    finally:
        await nc.close()


async def _register(url: str, admin: dict[str, Any], keys: list[SigningKey]) -> None:
    """The tenant's registry, written as its admin would (``immortal keys add``), on a
    server whose buckets exist already (they are made here if no hub ran yet)."""
    import nats

    from immortal_hub._resources import ensure_resources

    nc = await nats.connect(url, **admin)
    try:
        names = Names()
        await ensure_resources(nc.jetstream(), names)
        kv = await nc.jetstream().key_value(names.bucket_policy)
        entries = tuple(RegisteredKey(k.key_id, k.public_key) for k in keys)
        await kv.put(registry_key(TENANT), KeyRegistry(entries).to_bytes())
    finally:
        await nc.close()


def compare(metrics: dict[str, Any], suffix: str = SUFFIX) -> list[Cost]:
    """What auth on costs (``suffix``: the auth pass's, with signing or not), and a policy
    on top of it, from the passes' metrics."""
    what = suffix.strip(" []").removesuffix(" on")  # "auth", "auth+signing"
    # With signing or encryption, the auth pass alone ran too: their cost is beside it
    # (issue 17's figure); beside nothing at all it is shown for the whole picture.
    alone = suffix != SUFFIX and any(k.endswith(SUFFIX) for k in metrics)
    extra = what.removeprefix("auth+")
    return [
        *(
            cost(
                metrics, SUFFIX, "", "auth on / off: throughput kept", "auth on: unloaded p50 added"
            )
            + cost(
                metrics,
                suffix,
                SUFFIX,
                f"{extra} on / off (auth on): throughput kept",
                f"{extra} on (auth on): unloaded p50 added",
            )
            if alone
            else []
        ),
        *cost(
            metrics,
            suffix,
            "",
            f"{what} on / off: throughput kept",
            f"{what} on: unloaded p50 added",
            target=not alone,
        ),
        *cost(
            metrics,
            POLICY_SUFFIX,
            suffix,
            "policy on / off (auth on): throughput kept",
            "policy on: unloaded p50 added",
            target=False,
        ),
        *cost(metrics, POLICY_SUFFIX, "", "auth + policy / nothing: throughput kept", None),
    ]
