"""A whole app over real PostgreSQL and Redis, with helpers to act as users and API keys."""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.key_cache import KeyCache
from actors.tenant import Tenants
from bitnet_actor.app import create_app
from bitnet_actor.config import Settings
from bitnet_actor.handles import Handles
from bitnet_actor.observability import Metrics
from bitnet_actor.services.email import MemoryEmailSender
from bitnet_actor.services.sessions import COOKIE_NAME
from bitnet_actor.stores import open_stores
from bitnet_actor.system import build_auth, build_handles, build_model_cache
from bitnet_actor.tracing import Tracing

PASSWORD = "correct horse battery staple"


@dataclass
class Caller:
    """Credentials to send: a session (cookie + CSRF token), a bearer token, or nothing."""

    session: str | None = None
    csrf: str | None = None
    bearer: str | None = None
    user_id: str | None = None
    email: str | None = None
    orgs: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        h: dict[str, str] = {}
        if self.session:
            h["Cookie"] = f"{COOKIE_NAME}={self.session}"
            if self.csrf:
                h["X-CSRF-Token"] = self.csrf
        if self.bearer:
            h["Authorization"] = f"Bearer {self.bearer}"
        return h


ANON = Caller()


def session_from(response: Any) -> str:
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    match = re.search(rf"{re.escape(COOKIE_NAME)}=([^;]+)", cookie)
    assert match
    return match.group(1)


class Harness:
    def __init__(self, client: Any, mailer: MemoryEmailSender, system: Handles) -> None:
        self.client = client
        self.mailer = mailer
        self.system = system

    async def call(self, method: str, path: str, caller: Caller = ANON, json: Any = None, **kw: Any) -> Any:
        headers = {**caller.headers(), **kw.pop("headers", {})}
        if json is not None:
            kw["json"] = json
        return await self.client.open(path, method=method, headers=headers, **kw)

    def last_token(self, to: str) -> str:
        for message in reversed(self.mailer.outbox):
            if message.to == to:
                match = re.search(r"token=([A-Za-z0-9_-]+)", message.body)
                assert match, message.body
                return match.group(1)
        raise AssertionError(f"no mail to {to}")

    async def signup(self, org: str | None = None, email: str | None = None) -> Caller:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        org = org or f"org-{uuid.uuid4().hex[:10]}"
        r = await self.call("POST", "/api/v1/signup", json={"email": email, "password": PASSWORD, "organization": org})
        assert r.status_code == 202, await r.get_data()
        r = await self.call("POST", "/api/v1/signup/verify", json={"token": self.last_token(email)})
        assert r.status_code == 201, await r.get_data()
        body = await r.get_json()
        caller = Caller(session=session_from(r), csrf=body["csrf_token"], user_id=body["user"]["id"], email=email)
        caller.orgs[org] = body["organization"]["id"]
        return caller

    async def invite(self, owner: Caller, org_id: str, role: str) -> Caller:
        email = f"{role}-{uuid.uuid4().hex[:10]}@example.com"
        r = await self.call("POST", f"/api/v1/orgs/{org_id}/invitations", owner, json={"email": email, "role": role})
        assert r.status_code == 201, await r.get_data()
        r = await self.call(
            "POST", "/api/v1/invitations/accept", json={"token": self.last_token(email), "password": PASSWORD}
        )
        assert r.status_code == 201, await r.get_data()
        body = await r.get_json()
        return Caller(session=session_from(r), csrf=body["csrf_token"], user_id=body["user"]["id"], email=email)

    async def key(self, caller: Caller, org_id: str, scopes: list[str], name: str = "k") -> tuple[str, str]:
        r = await self.call("POST", f"/api/v1/orgs/{org_id}/keys", caller, json={"name": name, "scopes": scopes})
        assert r.status_code == 201, await r.get_data()
        body = await r.get_json()
        return body["key"], body["id"]


@asynccontextmanager
async def open_harness(settings: Settings, tracing: Tracing | None = None) -> AsyncIterator[Harness]:
    """The app over real stores with ``settings`` (and ``tracing``), its key cache listening, a test client."""
    mailer = MemoryEmailSender()
    async with open_stores(settings) as stores:
        keys = KeyCache(stores.db, stores.redis)
        auth = build_auth(settings, stores, b"k" * 32, mailer=mailer, keys=keys)
        metrics = Metrics()
        system = build_handles(
            settings,
            stores,
            metrics=metrics,
            auth=auth,
            cache=build_model_cache(settings, metrics, {}),
            tenants=Tenants(stores.db),
            tracing=tracing,
        )
        async with trio.open_nursery() as inner:
            await inner.start(keys.run)
            await inner.start(system.meter.run)  # type: ignore[attr-defined]
            app = create_app(system)
            async with app.test_app():
                yield Harness(app.test_client(use_cookies=False), mailer, system)
            inner.cancel_scope.cancel()
        if auth.oidc is not None:
            await auth.oidc.aclose()


@pytest.fixture
async def harness(aio_loop: object, pg_dsn: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = Settings(data_dir=tmp_path, database_url=pg_dsn, redis_url=redis_url)
    async with open_harness(settings) as h:
        yield h


@pytest.fixture(scope="session")
def model_dir() -> Iterator[Path]:
    """A tiny served checkpoint with a tokenizer, built by transformers once for the serving tests."""
    pytest.importorskip("transformers", reason="transformers builds the test model")
    from tests.api.served import build_model_dir

    root = Path(tempfile.mkdtemp(prefix="bitnet-served-"))
    yield build_model_dir(root / "tiny")
    shutil.rmtree(root, ignore_errors=True)
