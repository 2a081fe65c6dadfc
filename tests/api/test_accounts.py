from __future__ import annotations

import uuid

import trio

from bitnet_actor.services import passwords
from bitnet_actor.services.sessions import SessionStore
from tests.api.conftest import ANON, PASSWORD, Caller, Harness, session_from


async def test_signup_does_not_reveal_registered_emails(harness: Harness) -> None:
    user = await harness.signup()
    again = await harness.call(
        "POST", "/api/v1/signup", json={"email": user.email, "password": PASSWORD, "organization": "other-org-x"}
    )
    fresh = await harness.call(
        "POST",
        "/api/v1/signup",
        json={"email": f"n-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "organization": "o-y"},
    )
    assert again.status_code == fresh.status_code == 202
    assert await again.get_json() == await fresh.get_json()
    # The owner of the address learns about it by mail, not the caller.
    assert harness.mailer.outbox[-2].subject == "Sign-up attempt"


async def test_signup_token_is_single_use(harness: Harness) -> None:
    email = f"once-{uuid.uuid4().hex[:8]}@example.com"
    await harness.call("POST", "/api/v1/signup", json={"email": email, "password": PASSWORD, "organization": email})
    token = harness.last_token(email)
    assert (await harness.call("POST", "/api/v1/signup/verify", json={"token": token})).status_code == 201
    again = await harness.call("POST", "/api/v1/signup/verify", json={"token": token})
    assert again.status_code == 401


async def test_password_policy_and_field_errors(harness: Harness) -> None:
    r = await harness.call(
        "POST", "/api/v1/signup", json={"email": "a@example.com", "password": "short", "organization": "x"}
    )
    body = await r.get_json()
    assert r.status_code == 400
    assert body["error"]["param"] == "password"
    r = await harness.call(
        "POST", "/api/v1/signup", json={"email": "a@example.com", "password": 5, "organization": "x"}
    )
    assert (await r.get_json())["error"]["param"] == "password"
    r = await harness.call(
        "POST",
        "/api/v1/signup",
        json={"email": "a@example.com", "password": PASSWORD, "organization": "x", "admin": True},
    )
    assert (r.status_code, (await r.get_json())["error"]["param"]) == (400, "admin")
    r = await harness.call(
        "POST", "/api/v1/signup", json={"email": "not-an-email", "password": PASSWORD, "organization": "x"}
    )
    assert (await r.get_json())["error"]["param"] == "email"


async def test_login_one_message_and_session_cookie(harness: Harness) -> None:
    user = await harness.signup()
    wrong_password = await harness.call("POST", "/api/v1/login", json={"email": user.email, "password": "x" * 12})
    unknown_email = await harness.call(
        "POST", "/api/v1/login", json={"email": "nobody@example.com", "password": "x" * 12}
    )
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert (await wrong_password.get_json()) == (await unknown_email.get_json())
    ok = await harness.call("POST", "/api/v1/login", json={"email": user.email.upper(), "password": PASSWORD})
    assert ok.status_code == 200
    cookie = ok.headers["Set-Cookie"]
    assert cookie.startswith("__Host-bitnet_session=")
    new_session = session_from(ok)
    assert new_session != user.session  # a fresh id at every login
    me = await harness.call("GET", "/api/v1/me", Caller(session=new_session))
    assert (await me.get_json())["user"]["email"] == user.email


async def test_login_id_rotation_ends_the_presented_session(harness: Harness) -> None:
    user = await harness.signup()
    ok = await harness.call(
        "POST",
        "/api/v1/login",
        json={"email": user.email, "password": PASSWORD},
        headers={"Cookie": f"__Host-bitnet_session={user.session}"},
    )
    assert ok.status_code == 200
    assert (await harness.call("GET", "/api/v1/me", Caller(session=user.session))).status_code == 401


async def test_login_throttling(harness: Harness) -> None:
    user = await harness.signup()
    for _ in range(5):
        r = await harness.call("POST", "/api/v1/login", json={"email": user.email, "password": "wrong-password!"})
        assert r.status_code == 401
    r = await harness.call("POST", "/api/v1/login", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 0
    assert (await r.get_json())["error"]["type"] == "rate_limit_error"


async def test_csrf_required_for_cookie_writes(harness: Harness) -> None:
    user = await harness.signup()
    no_csrf = Caller(session=user.session)
    r = await harness.call("POST", "/api/v1/orgs", no_csrf, json={"name": f"o-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 403
    assert (await r.get_json())["error"]["code"] == "csrf_failed"
    r = await harness.call("POST", "/api/v1/orgs", user, json={"name": f"o-{uuid.uuid4().hex[:8]}"})
    assert r.status_code == 201
    assert (await harness.call("GET", "/api/v1/orgs", no_csrf)).status_code == 200  # reads need no token


async def test_logout(harness: Harness) -> None:
    user = await harness.signup()
    r = await harness.call("POST", "/api/v1/logout", user)
    assert r.status_code == 204
    assert (await harness.call("GET", "/api/v1/me", user)).status_code == 401


async def test_session_idle_and_absolute_timeouts(harness: Harness) -> None:
    store = SessionStore(harness.system.stores.redis, idle_s=1, absolute_s=60)
    session = await store.create(uuid.uuid4())
    await trio.sleep(1.6)
    assert await store.get(session.id) is None
    short = SessionStore(harness.system.stores.redis, idle_s=60, absolute_s=1)
    session = await short.create(uuid.uuid4())
    assert await short.get(session.id) is not None
    await trio.sleep(1.3)
    assert await short.get(session.id) is None


async def test_password_rehashed_on_login_when_parameters_change(harness: Harness) -> None:
    user = await harness.signup()
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    db = harness.system.stores.db
    await db.execute("UPDATE users SET password_hash = $2 WHERE id = $1", uuid.UUID(user.user_id), weak)
    assert passwords.needs_rehash(weak)
    r = await harness.call("POST", "/api/v1/login", json={"email": user.email, "password": PASSWORD})
    assert r.status_code == 200
    stored = await db.fetchval("SELECT password_hash FROM users WHERE id = $1", uuid.UUID(user.user_id))
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert not passwords.needs_rehash(stored)


async def test_unauthenticated_and_malformed_credentials(harness: Harness) -> None:
    assert (await harness.call("GET", "/api/v1/me", ANON)).status_code == 401
    r = await harness.call("GET", "/api/v1/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers
    r = await harness.call("GET", "/api/v1/me", Caller(bearer="bnk_live_nope"))
    assert r.status_code == 401
    assert (await r.get_json())["error"]["type"] == "authentication_error"


async def test_oversized_and_non_json_bodies(harness: Harness) -> None:
    r = await harness.call(
        "POST",
        "/api/v1/login",
        data=b'{"email": "' + b"a" * 100_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert (await r.get_json())["error"]["type"] == "invalid_request_error"
    r = await harness.call(
        "POST", "/api/v1/login", data=b"email=a", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415
