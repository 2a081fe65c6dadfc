"""JwtService against the real PostgreSQL: issue/verify, JWKS, rotation, retirement, forgeries, encryption."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from bitnet_actor.services.jwt import InvalidTokenError, JwtService, KeyDecryptionError

KEY = bytes(range(32))
ISSUER = "https://bitnet.example"
USER = "5a0b7a4e-52a4-4a43-9a8e-0d5f0f3f2d11"
ORG = "b1c2d3e4-0000-4000-8000-000000000001"


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: timestamptz keeps microseconds

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def keys_db(db):
    """The session database with no signing keys yet."""
    await db.execute("DELETE FROM jwt_signing_keys")
    return db


@pytest.fixture(scope="module")
def foreign() -> rsa.RSAPrivateKey:
    """An RSA key that is not ours."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def service(keys_db, clock):
    svc = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, clock=clock)
    await svc.ensure_keys()
    return svc


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def header_of(token: str) -> dict:
    return jwt.get_unverified_header(token)


async def key_states(db) -> dict[str, str]:
    rows = await db.fetch("SELECT kid, activated_at, superseded_at FROM jwt_signing_keys")
    return {
        r["kid"]: "next" if r["activated_at"] is None else "active" if r["superseded_at"] is None else "old"
        for r in rows
    }


async def test_issue_verify_round_trip(service, keys_db):
    token, expires_in = await service.issue_access_token(user_id=USER, org_id=ORG, scopes=["inference", "models:read"])
    assert expires_in == 900
    header = header_of(token)
    states = await key_states(keys_db)
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    assert states[header["kid"]] == "active"

    claims = await service.verify_access_token(token)
    assert claims.subject == USER
    assert claims.org_id == ORG
    assert claims.scopes == ("inference", "models:read")
    assert claims.key_id == header["kid"]
    assert claims.expires_at == pytest.approx(service._clock() + 900, abs=1)
    assert claims.token_id

    user_token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=[])
    user_claims = await service.verify_access_token(user_token)
    assert user_claims.org_id is None
    assert user_claims.scopes == ()
    assert user_claims.token_id != claims.token_id


async def test_jwks_publishes_active_and_next_key(service, keys_db):
    states = await key_states(keys_db)
    assert sorted(states.values()) == ["active", "next"]
    document = await service.jwks()
    kids = [k["kid"] for k in document["keys"]]
    assert set(kids) == set(states)
    assert states[kids[0]] == "active"
    for key in document["keys"]:
        assert key["kty"] == "RSA"
        assert key["alg"] == "RS256"
        assert key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # public halves only
    # The JWKS keys verify our tokens, as a relying party would use them.
    token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=["inference"])
    jwk_set = jwt.PyJWKSet.from_dict(document)
    key = next(k for k in jwk_set.keys if k.key_id == header_of(token)["kid"])
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="bitnet-actor", issuer=ISSUER)
    assert claims["sub"] == USER


async def test_rotate_now_keeps_old_tokens_valid_and_signs_with_the_published_next_key(service, keys_db, clock):
    old_token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=["inference"])
    before = await key_states(keys_db)
    old_kid = header_of(old_token)["kid"]
    next_kid = next(k for k, s in before.items() if s == "next")

    await service.rotate_now()

    after = await key_states(keys_db)
    assert after[old_kid] == "old"
    assert after[next_kid] == "active"
    assert sorted(after.values()) == ["active", "next", "old"]
    new_token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=["inference"])
    assert header_of(new_token)["kid"] == next_kid
    assert (await service.verify_access_token(old_token)).key_id == old_kid
    assert (await service.verify_access_token(new_token)).key_id == next_kid
    assert {k["kid"] for k in (await service.jwks())["keys"]} == set(after)

    # Another replica (its own cache, same database and encryption key) sees the same keys.
    replica = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, clock=clock)
    assert (await replica.verify_access_token(old_token)).key_id == old_kid
    replica_token, _ = await replica.issue_access_token(user_id=USER, org_id=None, scopes=[])
    assert header_of(replica_token)["kid"] == next_kid
    assert (await service.verify_access_token(replica_token)).subject == USER


async def test_retired_key_tokens_are_rejected(keys_db, clock):
    # Tokens that outlive the retirement of their key: the issuer's TTL is longer than the rotating replica's.
    long_lived = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, access_ttl_s=3600, clock=clock)
    await long_lived.ensure_keys()
    token, _ = await long_lived.issue_access_token(user_id=USER, org_id=None, scopes=[])
    old_kid = header_of(token)["kid"]
    rotator = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, access_ttl_s=60, clock=clock)
    await rotator.rotate_now()
    assert (await rotator.verify_access_token(token)).key_id == old_kid

    clock.advance(60 + 30 + 120 + 1)  # access TTL + leeway + grace
    with pytest.raises(InvalidTokenError, match="key retired"):
        await rotator.verify_access_token(token)
    assert old_kid not in {k["kid"] for k in (await rotator.jwks())["keys"]}

    await rotator.ensure_keys()  # deletes the retired key
    assert old_kid not in await key_states(keys_db)
    with pytest.raises(InvalidTokenError, match="unknown kid"):
        await rotator.verify_access_token(token)


async def test_rotate_now_retiring_old_keys_at_once(service, keys_db):
    # After a suspected key compromise: the old key's tokens must stop working now, not in 15 minutes.
    first_key_token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=[])
    await service.rotate_now()
    second_key_token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=[])
    await service.rotate_now(retire_old=True)
    assert sorted((await key_states(keys_db)).values()) == ["active", "next"]
    for token in (first_key_token, second_key_token):
        with pytest.raises(InvalidTokenError, match="unknown kid"):
            await service.verify_access_token(token)
    fresh, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=[])
    assert (await service.verify_access_token(fresh)).subject == USER


async def test_ensure_keys_rotates_on_schedule(keys_db, clock):
    svc = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, key_lifetime_s=1000, clock=clock)
    await svc.ensure_keys()
    first = await key_states(keys_db)
    clock.advance(999)
    await svc.ensure_keys()
    assert await key_states(keys_db) == first  # nothing due yet
    clock.advance(1)
    await svc.ensure_keys()
    second = await key_states(keys_db)
    promoted = next(k for k, s in first.items() if s == "next")
    assert second[promoted] == "active"
    assert sorted(second.values()) == ["active", "next", "old"]
    token, _ = await svc.issue_access_token(user_id=USER, org_id=None, scopes=[])
    assert header_of(token)["kid"] == promoted


async def test_concurrent_ensure_keys_creates_one_key_set(keys_db, clock):
    replicas = [JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, clock=clock) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for replica in replicas:
            nursery.start_soon(replica.ensure_keys)
    assert sorted((await key_states(keys_db)).values()) == ["active", "next"]
    tokens = [(await r.issue_access_token(user_id=USER, org_id=None, scopes=[]))[0] for r in replicas]
    assert len({header_of(t)["kid"] for t in tokens}) == 1


async def test_issue_creates_keys_on_first_use(keys_db, clock):
    svc = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, clock=clock)
    token, _ = await svc.issue_access_token(user_id=USER, org_id=None, scopes=[])
    assert (await svc.verify_access_token(token)).subject == USER
    assert sorted((await key_states(keys_db)).values()) == ["active", "next"]


async def test_private_keys_are_stored_encrypted(service, keys_db):
    rows = await keys_db.fetch("SELECT kid, public_jwk, private_key FROM jwt_signing_keys")
    assert len(rows) == 2
    for row in rows:
        stored = bytes(row["private_key"])
        assert b"PRIVATE KEY" not in stored
        assert stored[0] == 1
        # The DER of an RSA private key holds the modulus in the clear; sealed, it does not.
        modulus = base64.urlsafe_b64decode(row["public_jwk"]["n"] + "==")
        assert modulus[:32] not in stored

    other = JwtService(keys_db, encryption_key=bytes(32), issuer=ISSUER)
    with pytest.raises(KeyDecryptionError):
        await other.issue_access_token(user_id=USER, org_id=None, scopes=[])
    with pytest.raises(ValueError, match="32 bytes"):
        JwtService(keys_db, encryption_key=b"short", issuer=ISSUER)


async def test_expired_token_rejected(service, clock):
    token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=[])
    clock.advance(900 + 29)  # within the leeway
    await service.verify_access_token(token)
    clock.advance(2)
    with pytest.raises(InvalidTokenError, match="expired"):
        await service.verify_access_token(token)


async def test_token_from_the_future_rejected(service, clock):
    clock.advance(3600)
    token, _ = await service.issue_access_token(user_id=USER, org_id=None, scopes=[])
    clock.advance(-3600)
    with pytest.raises(InvalidTokenError, match="future"):
        await service.verify_access_token(token)


async def test_wrong_audience_and_issuer_rejected(service, keys_db, clock):
    # Same keys (same database), other settings: the signature is good, the claims are not ours.
    other_aud = JwtService(keys_db, encryption_key=KEY, issuer=ISSUER, audience="someone-else", clock=clock)
    token, _ = await other_aud.issue_access_token(user_id=USER, org_id=None, scopes=[])
    with pytest.raises(InvalidTokenError, match="wrong audience"):
        await service.verify_access_token(token)

    other_iss = JwtService(keys_db, encryption_key=KEY, issuer="https://evil.example", clock=clock)
    token, _ = await other_iss.issue_access_token(user_id=USER, org_id=None, scopes=[])
    with pytest.raises(InvalidTokenError, match="wrong issuer"):
        await service.verify_access_token(token)


def _claims(clock: Clock) -> dict:
    now = int(clock())
    return {"iss": ISSUER, "aud": "bitnet-actor", "sub": USER, "iat": now, "exp": now + 600, "jti": "x"}


async def test_alg_none_rejected(service, clock):
    kid = header_of((await service.issue_access_token(user_id=USER, org_id=None, scopes=[]))[0])["kid"]
    token = jwt.encode(_claims(clock), None, algorithm="none", headers={"kid": kid, "typ": "at+jwt"})
    with pytest.raises(InvalidTokenError, match="algorithm not allowed"):
        await service.verify_access_token(token)
    # And by hand, in case a library normalises the header: "None", empty signature.
    header = b64url(json.dumps({"alg": "None", "kid": kid, "typ": "at+jwt"}).encode())
    payload = b64url(json.dumps(_claims(clock)).encode())
    with pytest.raises(InvalidTokenError, match="algorithm not allowed"):
        await service.verify_access_token(f"{header}.{payload}.")


async def test_hs256_signed_with_the_public_key_rejected(service, clock):
    document = await service.jwks()
    jwk = document["keys"][0]
    public_pem = RSAAlgorithm.from_jwk(jwk).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "kid": jwk["kid"], "typ": "at+jwt"}).encode())
    payload = b64url(json.dumps(_claims(clock)).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidTokenError, match="algorithm not allowed"):
        await service.verify_access_token(f"{header}.{payload}.{b64url(signature)}")


async def test_unknown_kid_and_foreign_key_rejected(service, clock, foreign):
    token = jwt.encode(_claims(clock), foreign, algorithm="RS256", headers={"kid": "nope", "typ": "at+jwt"})
    with pytest.raises(InvalidTokenError, match="unknown kid"):
        await service.verify_access_token(token)
    # A foreign key claiming our kid: the signature fails.
    kid = (await service.jwks())["keys"][0]["kid"]
    token = jwt.encode(_claims(clock), foreign, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})
    with pytest.raises(InvalidTokenError, match="bad signature"):
        await service.verify_access_token(token)
    # No kid at all.
    token = jwt.encode(_claims(clock), foreign, algorithm="RS256", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidTokenError, match="no kid"):
        await service.verify_access_token(token)


async def test_tampered_and_malformed_tokens_rejected(service):
    token, _ = await service.issue_access_token(user_id=USER, org_id=ORG, scopes=["inference"])
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "inference admin"
    forged = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(InvalidTokenError, match="bad signature"):
        await service.verify_access_token(forged)
    for junk in ("", "abc", "a.b.c", token + "x", token.replace(".", "", 1)):
        with pytest.raises(InvalidTokenError):
            await service.verify_access_token(junk)


async def test_typ_must_be_access_token(service, keys_db, foreign):
    # typ is checked before the signature: a JWT of another type (an ID token, say) is never an access token.
    row = await keys_db.fetchrow("SELECT kid FROM jwt_signing_keys WHERE activated_at IS NOT NULL")
    token = jwt.encode({"sub": USER}, foreign, algorithm="RS256", headers={"kid": row["kid"], "typ": "JWT"})
    with pytest.raises(InvalidTokenError, match="not an access token"):
        await service.verify_access_token(token)


async def test_service_role_may_use_the_token_tables(db):
    for table in ("jwt_signing_keys", "refresh_token_families", "refresh_tokens", "oidc_identities"):
        assert await db.fetchval(
            "SELECT has_table_privilege('bitnet_app', $1, 'SELECT, INSERT, UPDATE, DELETE')", table
        ), table
    assert await db.fetchval("SELECT has_function_privilege('bitnet_app', 'pg_advisory_xact_lock(bigint)', 'EXECUTE')")
