"""The NATS auth callout service (ADR-26): every CONNECT that is not the service's own
reaches ``$SYS.REQ.USER.AUTH``; the service verifies the token the client sent
(``auth_token``), maps it to a principal, and answers with a user JWT whose permissions
cover that principal's tenant and role only (``immortal.security.permissions``). A
refusal is answered with its reason (which the server logs; the client sees
"Authorization Violation") and kept in ``IMM_AUDIT``. Run it as ``immortal auth serve``
or inside the hub's deployment; several instances share the work (a queue group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import jwt
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from immortal._connect import connect
from immortal._names import Names
from immortal._wire import now_ms
from immortal.security import (
    AuthConfig,
    ConnectSecurity,
    Principal,
    TokenError,
    TokenVerifier,
    grants_for,
)
from immortal.security.audit import UNVERIFIED_TENANT, AuditRecord, publish_audit
from immortal.security.permissions import Grants
from immortal_hub._resources import ResourceSettings, ensure_resources
from immortal_hub.auth import nats_jwt
from immortal_hub.auth.server_config import APP_ACCOUNT
from immortal_hub.policy._live import withheld_reads
from immortal_hub.policy._serve import served_queues
from immortal_hub.policy._watch import PolicyWatch

__all__ = ["AuthService"]

log = logging.getLogger(__name__)

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"


class AuthService:
    """``await AuthService(url, config=..., issuer_seed=..., user=..., password=...).start()``"""

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        config: AuthConfig,
        issuer_seed: str,
        user: str,
        password: str,
        account: str = APP_ACCOUNT,
        prefix: str = "imm",
        verifier: TokenVerifier | None = None,
        security: ConnectSecurity | None = None,
        settings: ResourceSettings | None = None,
    ) -> None:
        self.servers = servers
        self.config = config
        self.verifier = verifier or TokenVerifier(config)
        self.names = Names(prefix)
        self._seed = issuer_seed
        self._user, self._password = user, password
        self._account = account
        self._security = security
        self._settings = settings
        self._nc: NATS | None = None
        self._known: dict[str, dict[str, Any]] = {}  # pid -> the record last kept
        self._tasks: set[asyncio.Task[None]] = set()
        self._watching: asyncio.Task[None] | None = None
        self.allowed = 0
        self.refused = 0

    @property
    def issuer(self) -> str:
        return nats_jwt.public_key(self._seed)

    async def start(self) -> None:
        self._nc = await connect(
            self.servers,
            name="immortal-auth",
            security=self._security,
            user=self._user,
            password=self._password,
        )
        # The principals bucket and the audit stream: the service may start before a hub.
        await ensure_resources(self._nc.jetstream(), self.names, self._settings)
        self._principals = await self._nc.jetstream().key_value(self.names.bucket_principals)
        # Tenants' policies: which queues a worker may serve (worker.serve).
        self._policies = PolicyWatch(self._nc.jetstream(), self.names, engine="builtin")
        await self._policies.start()
        self._watching = asyncio.create_task(self._policies.watch())
        await self._nc.subscribe(AUTH_SUBJECT, queue="immortal-auth", cb=self._on_request)
        log.info("auth service for issuer %s serving %s", self.config.issuer, self.servers)

    async def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
        self._nc = None

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _on_request(self, msg: Msg) -> None:
        # Verification may fetch keys: never hold up the subscription's other requests.
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = nats_jwt.decode(msg.data.decode())
            nats = request["nats"]
            user_nkey, server_id = str(nats["user_nkey"]), str(nats["server_id"]["id"])
        except (nats_jwt.NatsJwtError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.error("unreadable authorization request: %s", exc)
            return  # nothing to answer to: the server times the connection out
        token = (nats.get("connect_opts") or {}).get("auth_token")
        where = _where(nats)
        try:
            principal = await self.verifier.verify(token)
        except TokenError as exc:
            await self._refuse(msg, user_nkey, server_id, exc, token, where)
            return
        principal = await served_queues(
            self._policies, self._nc, self.names, principal, by="immortal-auth"
        )
        await self._remember(principal)
        withheld = withheld_reads(self._policies, principal)  # live reads, by the policy
        grants = grants_for(principal, self.names, withheld=withheld)
        user_jwt = self._user_jwt(user_nkey, principal, grants)
        response = {"jwt": user_jwt}
        self.allowed += 1
        roles = ",".join(sorted(principal.roles))
        log.info(
            "connect %s: %s of tenant %s as %s",
            where.get("host", "?"), principal.subject, principal.tenant, roles,
        )  # fmt: skip
        await self._respond(msg, user_nkey, server_id, response)

    async def _refuse(
        self,
        msg: Msg,
        user_nkey: str,
        server_id: str,
        exc: TokenError,
        token: str | None,
        where: dict[str, Any],
    ) -> None:
        self.refused += 1
        record = AuditRecord(
            action="connect",
            decision="deny",
            reason=str(exc.reason),
            message=str(exc),
            claimed=_claimed(token),
            where=where,
            by="immortal-auth",
        )
        await publish_audit(self._nc, self.names, UNVERIFIED_TENANT, record)
        await self._respond(msg, user_nkey, server_id, {"error": f"{exc.reason}: {exc}"})

    async def _respond(
        self, msg: Msg, user_nkey: str, server_id: str, answer: dict[str, Any]
    ) -> None:
        claims = {
            "sub": user_nkey,
            "aud": server_id,
            "nats": {**answer, "type": "authorization_response", "version": 2},
        }
        with contextlib.suppress(Exception):
            await msg.respond(nats_jwt.encode(claims, self._seed).encode())

    def _user_jwt(self, user_nkey: str, principal: Principal, grants: Grants) -> str:
        pub: dict[str, Any] = {"allow": grants.pub}
        sub: dict[str, Any] = {"allow": grants.sub}
        if grants.pub_deny:
            pub["deny"] = grants.pub_deny
        if grants.sub_deny:
            sub["deny"] = grants.sub_deny
        nats: dict[str, Any] = {"pub": pub, "sub": sub, "type": "user", "version": 2}
        if grants.responses:
            nats["resp"] = {"max": 1, "ttl": 0}
        claims: dict[str, Any] = {
            "sub": user_nkey,
            "aud": self._account,
            "name": f"{principal.tenant}/{principal.subject}",
            "nats": nats,
        }
        if principal.expires_at is not None:
            claims["exp"] = principal.expires_at  # the server closes the connection then
        return nats_jwt.encode(claims, self._seed)

    async def _remember(self, principal: Principal) -> None:
        """Keep who ``principal.pid`` is for the hubs, when it changed (not per connect)."""
        record = principal.full_record()
        known = self._known.get(principal.pid)
        if known is not None and _same(known, record):
            return
        try:
            from immortal._codec import pack

            await self._principals.put(principal.pid, pack({**record, "ts": now_ms()}))
            self._known[principal.pid] = record
        except Exception as exc:  # the hub then records the pid alone
            log.warning("could not keep principal %s: %s", principal.pid, exc)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "expires_at"} == {
        k: v for k, v in b.items() if k != "expires_at"
    }


def _where(nats: dict[str, Any]) -> dict[str, Any]:
    info = nats.get("client_info") or {}
    opts = nats.get("connect_opts") or {}
    return {
        "host": info.get("host"),
        "client": opts.get("name") or info.get("name"),
        "server": (nats.get("server_id") or {}).get("name"),
        "tls": bool(nats.get("client_tls")),
    }


def _claimed(token: str | None) -> dict[str, Any] | None:
    """What a refused token said about itself, for the audit record: never the token."""
    if not token:
        return None
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {"format": "not a JWT"}
    return {
        "iss": claims.get("iss"),
        "sub": claims.get("sub"),
        "jti": claims.get("jti"),
        "kid": header.get("kid"),
        "alg": header.get("alg"),
    }
