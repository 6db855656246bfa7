"""``python -m bench -w throughput -w latency --secure``: the same workloads again on a
server with auth on (the NATS auth callout, tokens for the hubs, workers and the client),
in the same run, and what auth costs: the share of throughput kept and the latency added.
Tokens are verified at CONNECT only (cached); nothing is verified per message."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from immortal.security import ConnectSecurity
from immortal.testing import NatsServer
from immortal_hub.auth import AuthService, callout_config, new_account_seed, public_key
from immortal_hub.auth.local import LocalIssuer

SERVICE_USER = "immortal-auth"
SUFFIX = " [auth on]"


@dataclass
class Secure:
    server: NatsServer
    client: ConnectSecurity
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # "hub"/"worker" -> env
    admin: dict[str, Any] = field(default_factory=dict)  # nats.connect options, all rights


@asynccontextmanager
async def secure_server(tmp: Path) -> AsyncIterator[Secure]:
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
    try:
        yield Secure(
            server=server,
            client=ConnectSecurity.with_token(issuer.token("bench-client", ["default:writer"])),
            env={
                "hub": {"IMMORTAL_TOKEN": issuer.token("bench-hub", ["immortal-system:hub"])},
                "worker": {
                    "IMMORTAL_TOKEN": issuer.token(
                        "bench-worker", ["default:worker"], queues=["default"]
                    )
                },
            },
            admin={"user": SERVICE_USER, "password": password},
        )
    finally:
        await service.stop()
        await server.close()
        issuer.close()


def compare(metrics: dict[str, Any]) -> list[tuple[str, str, float, str]]:
    """(name, unit, value, target) of what auth on costs, from metrics of both runs."""
    out = []

    def median(name: str) -> float | None:
        m = metrics.get(name)
        if m is None or not m.values:
            return None
        v = sorted(m.values)
        return float(v[len(v) // 2])

    off, on = median("1 activity: completed"), median("1 activity: completed" + SUFFIX)
    if off and on:
        out.append(("auth on / off: throughput kept", "%", 100 * on / off, ">= 85"))
    off, on = median("unloaded latency p50"), median("unloaded latency p50" + SUFFIX)
    if off is not None and on is not None:
        out.append(("auth on: unloaded p50 added", "ms", on - off, "<= 1"))
    return out
