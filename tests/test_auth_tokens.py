"""Token verification against a key set served over HTTP: every refusal names its reason;
key rotation, IdP outages and forged key ids are handled without a restart or a flood."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from immortal._names import Names
from immortal.security import (
    AuthConfig,
    JwksCache,
    Principal,
    RefusalReason,
    Role,
    TokenError,
    TokenVerifier,
    grants_for,
    principal_id,
    unverified_pid,
)
from tests.security_fixtures import Issuer, hs256_with, raw_token


@pytest.fixture
def idp() -> Iterator[Issuer]:
    with Issuer.serving() as issuer:
        yield issuer


async def refused(verifier: TokenVerifier, token: str | None) -> RefusalReason:
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    assert str(info.value)  # a message a person can read
    return info.value.reason


async def test_a_valid_token_maps_to_its_tenant_roles_and_queues(idp: Issuer) -> None:
    verifier = TokenVerifier(idp.config())
    token = idp.token("svc-orders", ["acme:worker"], queues=["orders"], jti="t-1")
    principal = await verifier.verify(token)
    assert principal.tenant == "acme"
    assert principal.roles == {"worker"}
    assert principal.queues == ("orders",)
    assert principal.token_id == "t-1" and principal.issuer == idp.url
    assert principal.pid == principal_id(idp.url, "svc-orders") == unverified_pid(token)
    assert token not in str(principal.record()) and token not in str(principal.full_record())


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 60}, RefusalReason.EXPIRED),
        ({"nbf": int(time.time()) + 600}, RefusalReason.NOT_YET_VALID),
        ({"iss": "https://evil.example"}, RefusalReason.WRONG_ISSUER),
        ({"aud": "someone-else"}, RefusalReason.WRONG_AUDIENCE),
        ({"exp": None}, RefusalReason.MISSING_CLAIM),
        ({"permissions": ["acme:superuser", "nonsense"]}, RefusalReason.NO_ROLE),
        ({"permissions": ["acme:writer", "globex:reader"]}, RefusalReason.NO_ROLE),
    ],
)
async def test_bad_claims_are_refused_with_their_reason(
    idp: Issuer, claims: dict[str, object], reason: RefusalReason
) -> None:
    verifier = TokenVerifier(idp.config())
    permissions = claims.pop("permissions", ["acme:writer"])
    token = idp.token("ann", permissions, **claims)  # type: ignore[arg-type]
    assert await refused(verifier, token) is reason


async def test_forged_and_confused_tokens_are_refused(idp: Issuer) -> None:
    verifier = TokenVerifier(idp.config())
    claims = idp.claims("mallory", ["acme:admin"])
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Signed by another key under the issuer's kid.
    assert await refused(verifier, idp.token("mallory", ["acme:admin"], key=stranger)) is (
        RefusalReason.BAD_SIGNATURE
    )
    # A kid the issuer never had (and does not have after a refetch).
    assert await refused(
        verifier, idp.token("m", ["acme:admin"], kid="k-forged", key=stranger)
    ) is (RefusalReason.UNKNOWN_KID)
    # alg none, unsigned.
    none = raw_token({"alg": "none", "typ": "JWT", "kid": idp.newest}, claims)
    assert await refused(verifier, none) is RefusalReason.ALG_NOT_ALLOWED
    # HS256 "signed" with the issuer's public key as the HMAC secret.
    confused = hs256_with(idp.public_pem(), {"alg": "HS256", "kid": idp.newest}, claims)
    assert await refused(verifier, confused) is RefusalReason.ALG_NOT_ALLOWED
    # An allowed algorithm that does not fit the key's type (ES256 on an RSA key).
    wrong_family = raw_token({"alg": "ES256", "kid": idp.newest}, claims, b"x" * 64)
    assert await refused(verifier, wrong_family) is RefusalReason.ALG_NOT_ALLOWED
    assert await refused(verifier, "not-a-jwt") is RefusalReason.MALFORMED
    assert await refused(verifier, None) is RefusalReason.NO_TOKEN
    assert await refused(verifier, "") is RefusalReason.NO_TOKEN


def test_a_shared_secret_algorithm_cannot_be_configured(idp: Issuer) -> None:
    with pytest.raises(ValueError, match="HS256"):
        idp.config(algorithms=("RS256", "HS256"))


async def test_rotation_at_the_issuer_needs_no_restart(idp: Issuer) -> None:
    verifier = TokenVerifier(idp.config())
    before = idp.token("ann", ["acme:writer"])
    assert (await verifier.verify(before)).tenant == "acme"
    old, new = idp.rotate()  # a new kid appears, the old one is gone
    after = idp.token("bob", ["acme:reader"], kid=new)
    assert (await verifier.verify(after)).subject == "bob"
    assert new in verifier.keys.kids and old not in verifier.keys.kids
    # A token verified before the rotation stays verified (cached until it expires):
    # connections made with it are not cut off mid-run.
    assert (await verifier.verify(before)).subject == "ann"


async def test_forged_kids_cost_at_most_one_fetch_per_refresh_interval(idp: Issuer) -> None:
    verifier = TokenVerifier(idp.config())
    await verifier.verify(idp.token("ann", ["acme:writer"]))
    fetched = idp.requests
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = [idp.token("m", ["acme:admin"], kid=f"k-forged-{i}", key=stranger) for i in range(50)]
    reasons = await asyncio.gather(*(refused(verifier, t) for t in forged))
    assert set(reasons) == {RefusalReason.UNKNOWN_KID}
    assert idp.requests - fetched <= 1


async def test_the_last_good_key_set_outlives_an_issuer_outage(idp: Issuer) -> None:
    keys = JwksCache(idp.jwks_url, refresh_s=0.0, max_age_s=0.0)  # refetch on every use
    verifier = TokenVerifier(idp.config(), keys)
    assert (await verifier.verify(idp.token("ann", ["acme:writer"]))).subject == "ann"
    idp.down = True
    # A new token (not cached) is still verified with the last good set.
    assert (await verifier.verify(idp.token("bob", ["acme:writer"]))).subject == "bob"
    assert keys.fetches >= 2


async def test_no_key_set_at_all_says_so(idp: Issuer) -> None:
    idp.down = True
    verifier = TokenVerifier(idp.config())
    assert await refused(verifier, idp.token("ann", ["acme:writer"])) is (
        RefusalReason.KEYS_UNAVAILABLE
    )


async def test_verification_is_cached_per_token_until_it_expires(idp: Issuer) -> None:
    verifier = TokenVerifier(idp.config(leeway=0.0))
    token = idp.token("ann", ["acme:writer"], exp=int(time.time()) + 2)
    for _ in range(100):
        await verifier.verify(token)
    assert verifier.verified == 1
    await asyncio.sleep(2.2)
    assert await refused(verifier, token) is RefusalReason.EXPIRED


async def test_static_keys_and_es256(idp: Issuer) -> None:
    kid = idp.add_key("ec")
    config = AuthConfig(issuer=idp.url, audience="immortal", jwks=idp.jwks())
    principal = await TokenVerifier(config).verify(idp.token("ann", ["acme:reader"], kid=kid))
    assert principal.roles == {"reader"}


def test_config_from_a_file_and_the_environment(tmp_path, idp: Issuer) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "auth.toml"
    path.write_text(
        f'[auth]\nissuer = "{idp.url}"\njwks_url = "{idp.jwks_url}"\npermissions_claim = "perms"\n'
    )
    config = AuthConfig.load(path, env={"IMMORTAL_AUTH_AUDIENCE": "aud-2"})
    assert config.enabled and config.permissions_claim == "perms" and config.audience == "aud-2"
    assert not AuthConfig.load(env={}).enabled
    with pytest.raises(ValueError, match="unknown setting"):
        AuthConfig.load(env={"IMMORTAL_AUTH_CONFIG": str(path)}) if path.write_text(
            "[auth]\nisuer = 'typo'\n"
        ) else None


def test_grants_keep_each_role_inside_its_tenant() -> None:
    names = Names()
    reader = Principal(subject="r", tenant="acme", roles=frozenset({"reader"}), pid="pr")
    writer = Principal(subject="w", tenant="acme", roles=frozenset({"writer"}), pid="pw")
    worker = Principal(
        subject="k", tenant="acme", roles=frozenset({"worker"}), queues=("orders",), pid="pk"
    )
    for principal in (reader, writer, worker):
        grants = grants_for(principal, names)
        assert all(
            ".acme." in s or "_acme_" in s or s.startswith("_INBOX_p")
            for s in grants.pub + grants.sub
        ), grants
        assert not any(s in (">", "imm.>", "$JS.API.>") for s in grants.pub + grants.sub)
    assert not any(".start." in s for s in grants_for(reader, names).pub)
    assert any(s == "imm.rpc.acme.*.start.pw" for s in grants_for(writer, names).pub)
    worker_pub = grants_for(worker, names).pub
    assert "$JS.API.CONSUMER.MSG.NEXT.IMM_TASKS.act_acme_orders" in worker_pub
    assert not any("payments" in s for s in worker_pub)
    assert Role.HUB.value == "hub"


def test_a_token_command_runs_at_connect_not_per_call(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from immortal.security import ConnectSecurity, TokenSource

    count = tmp_path / "count"
    script = tmp_path / "token.sh"
    script.write_text(
        "#!/bin/sh\necho x >> " + str(count) + "\n"
        "echo eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm4iLCJpc3MiOiJpIiwicGVybWlzc2lvbnMiOlsiYWNtZTp3cml0ZXIiXX0.\n"
    )
    script.chmod(0o755)
    security = ConnectSecurity(token=TokenSource(command=str(script), env={}))
    for _ in range(20):
        principal = security.principal()
        assert principal is not None and principal.tenant == "acme"
        security.sender()
    assert count.read_text().count("x") == 1
    assert security.token is not None
    security.token()  # a reconnect asks again
    assert count.read_text().count("x") == 2
