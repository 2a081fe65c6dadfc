"""OIDC login end to end against a real provider (oidc-provider-mock in a thread), and account linking.

The provider's authorization page is driven with httpx as a browser would: GET shows a form, POST with a
subject answers with a redirect to our callback carrying ``code`` and ``state``. Its ID tokens are RS256
without a ``kid``. (oidc-provider-mock 0.3.4 accepts but does not check PKCE; ours is checked here by
recomputing the challenge from the stored verifier.)
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bitnet_actor.errors import ConfigError
from bitnet_actor.services.oidc import (
    STATE_KEY_PREFIX,
    OidcClient,
    OidcError,
    OidcIdentity,
    OidcSettings,
    OidcStateError,
    link_identity,
    pkce_challenge,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

# The provider runs in a thread of this process, so the warning filters of the running test apply to it too;
# its authlib calls deprecated APIs of its own.
pytestmark = [
    pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning"),
]

REDIRECT_URI = "http://localhost:9/auth/oidc/callback"
CLIENT_ID = "bitnet-test-client"
CLIENT_SECRET = "s3cret:with/odd&chars+long-enough-for-HS256"


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    """A running OpenID provider; yields its issuer URL."""
    with warnings.catch_warnings(record=True):  # authlib warns on import and sets a global filter
        warnings.simplefilter("ignore")
        from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread(port=0, require_nonce=True) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
async def client(issuer, redis):
    oidc = OidcClient(
        OidcSettings(issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uri=REDIRECT_URI),
        redis,
    )
    yield oidc
    await oidc.aclose()


@pytest.fixture
async def browser():
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def set_user(browser: httpx.AsyncClient, issuer: str, sub: str, claims: dict) -> None:
    response = await browser.put(f"{issuer}/users/{sub}", json=claims)
    assert response.status_code == 204, response.text


async def authorize(browser: httpx.AsyncClient, url: str, sub: str) -> dict[str, str]:
    """Log in at the provider as ``sub``; return the parameters of the redirect to our callback."""
    page = await browser.get(url)
    assert page.status_code == 200, page.text
    assert 'name="sub"' in page.text
    answer = await browser.post(url, data={"sub": sub})
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return dict(parse_qsl(urlsplit(location).query))


def unique_email() -> str:
    return f"{uuid.uuid4().hex[:12]}@example.com"


async def test_full_login_with_pkce(client, browser, issuer, redis):
    email = unique_email()
    await set_user(browser, issuer, "alice", {"email": email, "email_verified": True, "name": "Alice A."})

    url = await client.begin_login(return_to="/portal/orgs?tab=keys")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(f"{issuer}/oauth2/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "openid email profile"
    assert query["code_challenge_method"] == "S256"
    record = json.loads(await redis.get(STATE_KEY_PREFIX + query["state"]))
    assert record["nonce"] == query["nonce"]
    assert query["code_challenge"] == pkce_challenge(record["verifier"])
    assert 43 <= len(record["verifier"]) <= 128

    callback = await authorize(browser, url, "alice")
    assert callback["state"] == query["state"]
    identity, return_to = await client.complete_login(state=callback["state"], code=callback["code"])
    assert identity == OidcIdentity(issuer=issuer, subject="alice", email=email, email_verified=True, name="Alice A.")
    assert return_to == "/portal/orgs?tab=keys"
    assert await redis.get(STATE_KEY_PREFIX + query["state"]) is None


async def test_provider_id_tokens_have_no_kid(client, browser, issuer):
    # The premise of the no-kid path: the provider's ID tokens name no key.
    await set_user(browser, issuer, "kidless", {"email": unique_email()})
    url = await client.begin_login()
    callback = await authorize(browser, url, "kidless")
    token = await browser.post(
        f"{issuer}/oauth2/token",
        data={"grant_type": "authorization_code", "code": callback["code"], "redirect_uri": REDIRECT_URI},
        auth=(CLIENT_ID, CLIENT_SECRET),
    )
    assert "kid" not in jwt.get_unverified_header(token.json()["id_token"])


async def test_unverified_email_is_reported_unverified(client, browser, issuer):
    email = unique_email()
    await set_user(browser, issuer, "bob", {"email": email})  # no email_verified claim
    url = await client.begin_login()
    callback = await authorize(browser, url, "bob")
    identity, return_to = await client.complete_login(state=callback["state"], code=callback["code"])
    assert (identity.email, identity.email_verified, identity.name, return_to) == (email, False, None, "/")


async def test_wrong_state_rejected(client, browser, issuer):
    await set_user(browser, issuer, "carol", {"email": unique_email(), "email_verified": True})
    url = await client.begin_login()
    callback = await authorize(browser, url, "carol")
    with pytest.raises(OidcStateError):
        await client.complete_login(state="forged-" + callback["state"], code=callback["code"])
    with pytest.raises(OidcStateError):
        await client.complete_login(state="", code=callback["code"])


async def test_state_is_single_use(client, browser, issuer):
    await set_user(browser, issuer, "dave", {"email": unique_email(), "email_verified": True})
    url = await client.begin_login()
    callback = await authorize(browser, url, "dave")
    await client.complete_login(state=callback["state"], code=callback["code"])
    with pytest.raises(OidcStateError, match="already used"):
        await client.complete_login(state=callback["state"], code=callback["code"])


async def test_login_is_bound_to_the_browser_that_started_it(client, browser, issuer):
    await set_user(browser, issuer, "heidi", {"email": unique_email(), "email_verified": True})
    url = await client.begin_login(binding="cookie-of-the-attacker")
    callback = await authorize(browser, url, "heidi")
    # The attacker sends the callback link to a victim, whose browser has another (or no) cookie.
    with pytest.raises(OidcStateError, match="another browser"):
        await client.complete_login(state=callback["state"], code=callback["code"], binding="victim-cookie")

    url = await client.begin_login(binding="cookie-1")
    callback = await authorize(browser, url, "heidi")
    with pytest.raises(OidcStateError, match="another browser"):
        await client.complete_login(state=callback["state"], code=callback["code"])

    url = await client.begin_login(binding="cookie-2")
    callback = await authorize(browser, url, "heidi")
    identity, _ = await client.complete_login(state=callback["state"], code=callback["code"], binding="cookie-2")
    assert identity.subject == "heidi"


async def test_tampered_nonce_rejected(client, browser, issuer, redis):
    await set_user(browser, issuer, "erin", {"email": unique_email(), "email_verified": True})
    url = await client.begin_login()
    state = parse_qs(urlsplit(url).query)["state"][0]
    key = STATE_KEY_PREFIX + state
    record = json.loads(await redis.get(key))
    record["nonce"] = "not-the-nonce-sent-to-the-provider"
    await redis.set(key, json.dumps(record), ex=600)
    callback = await authorize(browser, url, "erin")
    with pytest.raises(OidcError, match="nonce"):
        await client.complete_login(state=callback["state"], code=callback["code"])


async def test_state_of_another_provider_rejected(client, browser, issuer, redis):
    await set_user(browser, issuer, "frank", {"email": unique_email(), "email_verified": True})
    url = await client.begin_login()
    state = parse_qs(urlsplit(url).query)["state"][0]
    record = json.loads(await redis.get(STATE_KEY_PREFIX + state))
    record["issuer"] = "https://other.example"
    await redis.set(STATE_KEY_PREFIX + state, json.dumps(record), ex=600)
    callback = await authorize(browser, url, "frank")
    with pytest.raises(OidcStateError, match="another provider"):
        await client.complete_login(state=callback["state"], code=callback["code"])


async def test_bad_code_rejected(client):
    await client.begin_login()
    url = await client.begin_login()
    state = parse_qs(urlsplit(url).query)["state"][0]
    with pytest.raises(OidcError, match="HTTP 400"):
        await client.complete_login(state=state, code="no-such-code")


async def test_forged_id_tokens_rejected(client, issuer):
    now = int(time.time())
    claims = {"iss": issuer, "aud": CLIENT_ID, "sub": "mallory", "iat": now, "exp": now + 600, "nonce": "n"}
    for alg, key in (("none", None), ("HS256", CLIENT_SECRET)):
        token = jwt.encode(claims, key, algorithm=alg)
        with pytest.raises(OidcError, match="not allowed"):
            await client.verify_id_token(token, nonce="n", access_token=None)
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(OidcError, match="does not verify"):
        await client.verify_id_token(jwt.encode(claims, foreign, algorithm="RS256"), nonce="n", access_token=None)
    token = jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": "unknown"})
    with pytest.raises(OidcError, match="no key"):
        await client.verify_id_token(token, nonce="n", access_token=None)


async def test_return_to_must_be_local(client):
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "x"):
        with pytest.raises(OidcError, match="local path"):
            await client.begin_login(return_to=bad)


def test_settings_validation():
    good = {"client_id": "c", "client_secret": "s", "redirect_uri": "https://app.example/cb"}
    OidcSettings(issuer="https://accounts.example", **good)
    with pytest.raises(ConfigError, match="https"):
        OidcSettings(issuer="http://accounts.example", **good)
    with pytest.raises(ConfigError, match="openid"):
        OidcSettings(issuer="https://accounts.example", scopes=("email",), **good)
    with pytest.raises(ConfigError, match="secret"):
        OidcSettings(issuer="https://accounts.example", **{**good, "client_secret": ""})


# -- link_identity ---------------------------------------------------------------------------------------------


async def make_user(db, email: str, *, verified: bool, password_hash: str | None = None) -> str:
    user_id = await db.fetchval(
        "INSERT INTO users (email, email_verified, password_hash) VALUES ($1, $2, $3) RETURNING id",
        email,
        verified,
        password_hash,
    )
    return str(user_id)


def identity(email: str | None, *, verified: bool, subject: str | None = None) -> OidcIdentity:
    return OidcIdentity(
        issuer="https://idp.example",
        subject=subject or uuid.uuid4().hex,
        email=email,
        email_verified=verified,
        name="Someone",
    )


async def test_link_creates_a_new_user(db):
    email = unique_email()
    who = identity(email, verified=True)
    user_id = await link_identity(db, who)
    row = await db.fetchrow("SELECT email, name, email_verified FROM users WHERE id = $1", uuid.UUID(user_id))
    assert (row["email"], row["name"], row["email_verified"]) == (email, "Someone", True)
    assert await link_identity(db, who) == user_id  # the second login finds the link

    unverified = identity(unique_email(), verified=False)
    other = await link_identity(db, unverified)
    assert await db.fetchval("SELECT email_verified FROM users WHERE id = $1", uuid.UUID(other)) is False


async def test_link_by_verified_email_to_an_existing_user(db):
    email = unique_email()
    existing = await make_user(db, email, verified=True, password_hash="x")
    who = identity(email.upper(), verified=True)
    assert await link_identity(db, who) == existing
    assert await db.fetchval("SELECT password_hash FROM users WHERE id = $1", uuid.UUID(existing)) == "x"
    # Linked by (issuer, subject) from now on, whatever the email becomes.
    moved = OidcIdentity(who.issuer, who.subject, unique_email(), False, None)
    assert await link_identity(db, moved) == existing


async def test_link_to_an_unverified_local_account_ends_its_password(db):
    # Pre-hijacking: someone registered the address first and never verified it.
    email = unique_email()
    squatted = await make_user(db, email, verified=False, password_hash="attacker's")
    assert await link_identity(db, identity(email, verified=True)) == squatted
    row = await db.fetchrow("SELECT email_verified, password_hash FROM users WHERE id = $1", uuid.UUID(squatted))
    assert (row["email_verified"], row["password_hash"]) == (True, None)


async def test_unverified_email_never_takes_over_an_account(db):
    email = unique_email()
    victim = await make_user(db, email, verified=True)
    who = identity(email, verified=False)
    with pytest.raises(OidcError, match="not verified"):
        await link_identity(db, who)
    assert await db.fetchval("SELECT count(*) FROM oidc_identities WHERE user_id = $1", uuid.UUID(victim)) == 0
    assert await db.fetchval("SELECT count(*) FROM users WHERE lower(email) = $1", email) == 1


async def test_identity_without_email_refused(db):
    with pytest.raises(OidcError, match="no email"):
        await link_identity(db, identity(None, verified=False))


async def test_login_then_link_end_to_end(db, client, browser, issuer):
    email = unique_email()
    existing = await make_user(db, email, verified=True)
    await set_user(browser, issuer, "grace", {"email": email, "email_verified": True})
    url = await client.begin_login()
    callback = await authorize(browser, url, "grace")
    who, _ = await client.complete_login(state=callback["state"], code=callback["code"])
    assert await link_identity(db, who) == existing
    row = await db.fetchrow("SELECT issuer, subject FROM oidc_identities WHERE user_id = $1", uuid.UUID(existing))
    assert (row["issuer"], row["subject"]) == (issuer, "grace")
