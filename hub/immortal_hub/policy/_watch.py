"""Each tenant's policy, as the hubs use it: read from ``imm-policy`` (key
``<tenant>.policy``) at start, then kept current by a watch of the bucket, so a policy
applied with ``immortal policy apply`` decides on every hub within a second (typically a
few milliseconds). A version older than the one in use is ignored (versions only grow),
a deleted key turns the tenant's policy off, and a stored document the hub cannot read is
logged and leaves the version in use in place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

import nats
from nats.js.errors import KeyNotFoundError, NoKeysError

from immortal._names import Names
from immortal._transient import key_value, retry_transient
from immortal.policy import PolicyDocument, PolicyEngine, PolicyError, make_engine
from immortal.policy._compile import CompiledPolicy
from immortal.policy._store import POLICY_KEY, decode_stored

__all__ = ["PolicyWatch", "TenantPolicy"]

log = logging.getLogger(__name__)

_ACTIVITY_ACTIONS = frozenset({"activity.run", "activity.*"})


class TenantPolicy:
    """One tenant's policy version: the engine that decides and what it covers."""

    def __init__(self, document: PolicyDocument, engine: PolicyEngine) -> None:
        self.document = document
        self.engine = engine
        self._compiled = CompiledPolicy(document)
        self._covered: dict[str, bool] = {}
        self._by_id: dict[str, bool] = {}

    @property
    def version(self) -> int:
        return self.document.version

    @property
    def compiled(self) -> CompiledPolicy:
        """The document compiled (whatever the engine): for questions no single decision
        answers, such as ``reads_every_run``."""
        return self._compiled

    def covers_activity(self, activity_type: str) -> bool:
        """Whether some rule names ``activity.run`` (not just ``*``) for this activity type:
        only then is an activity task decided before it is dispatched, so a policy about
        starts does not, by its silence, deny every activity."""
        known = self._covered.get(activity_type)
        if known is None:
            known = self._covered[activity_type] = _covers(self._compiled, activity_type)
        return known

    def reads_workflow_id(self, action: str) -> bool:
        """Whether a decision on ``action`` may depend on the workflow id: some rule
        covering it names a workflow id pattern, a relation or a condition (which may
        reach it; taken as reading it, to be sure)."""
        known = self._by_id.get(action)
        if known is None:
            known = self._by_id[action] = any(
                rule.relation is not None
                or rule.condition is not None
                or any(name == "workflow_id" for fields in rule.patterns for name, _ in fields)
                for rule in self._compiled.by_action[action].all
            )
        return known


class PolicyWatch:
    def __init__(self, js: Any, names: Names, *, engine: str) -> None:
        self.js = js
        self.names = names
        self.engine_name = engine
        self._policies: dict[str, TenantPolicy] = {}
        self.changes = 0  # versions taken in use, for tests

    def get(self, tenant: str) -> TenantPolicy | None:
        return self._policies.get(tenant)

    async def start(self) -> None:
        """Read every stored policy (so the first input is decided by it)."""
        self.kv = await key_value(self.js, self.names.bucket_policy)
        # Fails closed: a hub that cannot read the policies does not start deciding
        # without them (a leader election is waited out, as everywhere).
        try:
            keys = await retry_transient(self.kv.keys, what=self.names.bucket_policy)
        except NoKeysError:
            return
        for key in keys:
            if key.endswith("." + POLICY_KEY):
                with contextlib.suppress(KeyNotFoundError):  # deleted meanwhile
                    entry = await retry_transient(partial(self.kv.get, key), what=key)
                    self._take(key, entry.value, entry.revision or 0)

    async def watch(self) -> None:
        while True:
            try:
                watcher = await self.kv.watch(f"*.{POLICY_KEY}")
                try:
                    while True:
                        try:
                            entry = await watcher.updates(timeout=5.0)  # type: ignore[no-untyped-call]
                        except (TimeoutError, nats.errors.TimeoutError):
                            continue  # quiet: the same watch goes on (a new one re-reads all)
                        if entry is None:
                            continue  # the end of the initial values
                        if entry.operation in ("DEL", "PURGE"):
                            self._drop(entry.key)
                        else:
                            self._take(entry.key, entry.value, entry.revision or 0)
                finally:
                    await watcher.stop()  # type: ignore[no-untyped-call]
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reconnects, server restarts: watch again
                log.debug("policy watch restarted: %s", exc)
                await asyncio.sleep(0.5)

    def _take(self, key: str, value: bytes | None, revision: int) -> None:
        tenant = key.rsplit(".", 1)[0]
        if not value:
            self._drop(key)
            return
        try:
            stored = decode_stored(value, revision)
            current = self._policies.get(tenant)
            if current is not None and stored.document.version <= current.version:
                return  # the one in use, or an older one: nothing to compile
            if stored.document.tenant != tenant:
                log.error("key %s holds tenant %r's policy: ignored", key, stored.document.tenant)
                return
            engine = make_engine(stored.document, self.engine_name)
        except PolicyError as exc:
            log.error("tenant %s: %s; the policy in use stays", tenant, exc)
            return
        self._policies[tenant] = TenantPolicy(stored.document, engine)
        self.changes += 1
        log.info("tenant %s: policy v%d in use", tenant, stored.document.version)

    def _drop(self, key: str) -> None:
        tenant = key.rsplit(".", 1)[0]
        if self._policies.pop(tenant, None) is not None:
            log.info("tenant %s: policy removed; its roles decide again", tenant)


def _covers(compiled: CompiledPolicy, activity_type: str) -> bool:
    for rule in compiled.by_action["activity.run"].all:
        if not _ACTIVITY_ACTIONS & set(rule.rule.actions):
            continue
        if not rule.patterns:
            return True
        for fields in rule.patterns:
            if all(m(activity_type) for name, m in fields if name == "activity_type"):
                return True
    return False
