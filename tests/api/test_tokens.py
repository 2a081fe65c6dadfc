"""Access tokens over HTTP: the token endpoint, bearer JWTs, JWKS, and single sign-on end to end."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from bitnet_actor.config import Settings
from tests.api.conftest import PASSWORD, Caller, Harness, open_harness, session_from

pytestmark = [pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")]


async def test_password_grant_bearer_jwt_and_jwks(harness: Harness) -> None:
    user = await harness.signup()
    org = next(iter(user.orgs.values()))
    r = await harness.call(
        "POST",
        "/api/v1/token",
        json={"grant_type": "password", "email": user.email, "password": PASSWORD, "org_id": org},
    )
    assert r.status_code == 200, await r.get_data()
    assert r.headers["Cache-Control"] == "no-store"
    tokens = await r.get_json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0
    header = pyjwt.get_unverified_header(tokens["access_token"])
    assert header["alg"] == "RS256" and header["kid"]
    jwks = await (await harness.call("GET", "/.well-known/jwks.json")).get_json()
    assert header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert len(jwks["keys"]) >= 2  # the next key is published before it signs
    bearer = Caller(bearer=tokens["access_token"])
    assert (await harness.call("GET", "/api/v1/me", bearer)).status_code == 200
    assert (await harness.call("GET", f"/api/v1/orgs/{org}/members", bearer)).status_code == 200
    other = await harness.signup()
    other_org = next(iter(other.orgs.values()))
    # A token bound to one organization does not open another, even one the user joins later.
    assert (await harness.call("GET", f"/api/v1/orgs/{other_org}", bearer)).status_code == 404


async def test_refresh_rotation_and_reuse_detection(harness: Harness) -> None:
    user = await harness.signup()
    first = await (
        await harness.call(
            "POST", "/api/v1/token", json={"grant_type": "password", "email": user.email, "password": PASSWORD}
        )
    ).get_json()
    r = await harness.call(
        "POST", "/api/v1/token", json={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert r.status_code == 200
    second = await r.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    reused = await harness.call(
        "POST", "/api/v1/token", json={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert reused.status_code == 401
    assert (await reused.get_json())["error"]["code"] == "refresh_token_reused"
    # The whole family is revoked: the newest token is dead too.
    r = await harness.call(
        "POST", "/api/v1/token", json={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    )
    assert r.status_code == 401


async def test_forged_bearer_tokens_rejected(harness: Harness) -> None:
    user = await harness.signup()
    good = await (
        await harness.call(
            "POST", "/api/v1/token", json={"grant_type": "password", "email": user.email, "password": PASSWORD}
        )
    ).get_json()
    claims = pyjwt.decode(good["access_token"], options={"verify_signature": False})
    unsigned = pyjwt.encode(claims, key=None, algorithm="none")
    jwks = await (await harness.call("GET", "/.well-known/jwks.json")).get_json()
    public_pem = pyjwt.algorithms.RSAAlgorithm.from_jwk(jwks["keys"][0]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The classic confusion attack, signed by hand (PyJWT refuses to): HS256 with the public key as secret.
    head = _b64({"alg": "HS256", "typ": "at+jwt", "kid": jwks["keys"][0]["kid"]})
    body = _b64(claims)
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    hs256 = f"{head}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    for token in (unsigned, hs256, good["access_token"][:-4] + "AAAA"):
        r = await harness.call("GET", "/api/v1/me", Caller(bearer=token))
        assert r.status_code == 401


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_token_endpoint_errors(harness: Harness) -> None:
    r = await harness.call("POST", "/api/v1/token", json={"grant_type": "magic"})
    assert ((await r.get_json())["error"]["param"], r.status_code) == ("grant_type", 400)
    r = await harness.call("POST", "/api/v1/token", json={"grant_type": "password", "email": "a@b.example"})
    assert (await r.get_json())["error"]["param"] == "password"
    r = await harness.call(
        "POST", "/api/v1/token", json={"grant_type": "password", "email": "nobody@b.example", "password": "x" * 12}
    )
    assert r.status_code == 401


CLIENT_ID = "bitnet-http-client"
CLIENT_SECRET = "another-secret-that-is-long-enough"


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("ignore")
        from oidc_provider_mock import run_server_in_thread
    with run_server_in_thread(port=0, require_nonce=True) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
async def sso(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path, issuer: str) -> AsyncIterator[Harness]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_dsn,
        redis_url=redis_url,
        public_url="http://localhost:9",
        oidc_issuer=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
    )
    async with open_harness(settings) as h:
        yield h


async def test_sso_login_end_to_end(sso: Harness, issuer: str) -> None:
    email = "sso-user@corp.example"
    async with httpx.AsyncClient(timeout=10) as browser:
        r = await browser.put(
            f"{issuer}/users/alice-sso", json={"email": email, "email_verified": True, "name": "Alice"}
        )
        assert r.status_code == 204
        start = await sso.call("GET", "/api/v1/oidc/login?return_to=/portal")
        assert start.status_code == 302
        binding = start.headers["Set-Cookie"].split(";")[0]
        assert binding.startswith("__Host-bitnet_oidc=")
        authorize_url = start.headers["Location"]
        assert authorize_url.startswith(f"{issuer}/oauth2/authorize?")
        query = dict(parse_qsl(urlsplit(authorize_url).query))
        assert query["code_challenge_method"] == "S256" and query["state"] and query["nonce"]
        answer = await browser.post(authorize_url, data={"sub": "alice-sso"})
        callback = urlsplit(answer.headers["location"])
        assert callback.path == "/api/v1/oidc/callback"
        # A browser without the binding cookie cannot finish someone else's login.
        stolen = await sso.call("GET", f"{callback.path}?{callback.query}")
        assert stolen.status_code == 401
    async with httpx.AsyncClient(timeout=10) as browser:
        start = await sso.call("GET", "/api/v1/oidc/login?return_to=https://evil.example/")
        binding = start.headers["Set-Cookie"].split(";")[0]
        answer = await browser.post(start.headers["Location"], data={"sub": "alice-sso"})
        callback = urlsplit(answer.headers["location"])
        done = await sso.call("GET", f"{callback.path}?{callback.query}", headers={"Cookie": binding})
        assert done.status_code == 302
        assert done.headers["Location"] == "/"  # never an open redirect
        me = await sso.call("GET", "/api/v1/me", Caller(session=session_from(done)))
        assert (await me.get_json())["user"]["email"] == email


async def test_replica_with_another_secret_key_answers_503(harness: Harness) -> None:
    from bitnet_actor.services.jwt import JwtService

    user = await harness.signup()
    await harness.call(
        "POST", "/api/v1/token", json={"grant_type": "password", "email": user.email, "password": PASSWORD}
    )
    wrong = JwtService(harness.system.stores.db, encryption_key=b"x" * 32, issuer="http://localhost:9")
    object.__setattr__(harness.system.auth, "jwt", wrong)
    r = await harness.call(
        "POST", "/api/v1/token", json={"grant_type": "password", "email": user.email, "password": PASSWORD}
    )
    assert r.status_code == 503
    assert (await r.get_json())["error"]["code"] == "misconfigured"
