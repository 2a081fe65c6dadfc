"""The /v1/responses websocket with a signed-in browser's session cookie (the portal's playground): same
origin, the session's CSRF token and a member's organization required; responses metered as the user's."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio_asyncio

from bitnet_actor.services import tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.services.sessions import COOKIE_NAME
from bitnet_actor.stores.postgres import open_database
from tests.api.conftest import session_from
from tests.api.served import Served, serve
from tests.api.test_openai_api import events_until_done, in_thread

pytest.importorskip("websockets", reason="the websocket client is a test dependency")


@pytest.fixture
async def served(aio_loop: object, pg_dsn: str, redis_url: str, model_dir: Path) -> AsyncIterator[Served]:
    data_dir = Path(tempfile.mkdtemp(prefix="bitnet-data-"))
    try:
        async with serve(pg_dsn, redis_url, data_dir, {"tiny": model_dir}) as s:
            yield s
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _owner(dsn: str) -> tuple[uuid.UUID, str]:
    """An organization whose owner has a password-set token (as ``bitnet-actor admin create-org`` makes)."""

    async def create() -> tuple[uuid.UUID, str]:
        async with trio_asyncio.open_loop(), open_database(dsn, min_size=1, max_size=1) as db:
            name = f"play-{uuid.uuid4().hex[:8]}"
            org, _, token = await tenancy.admin_create_org(db, name=name, owner_email=f"owner@{name}.example.com")
            await plans.set_org_plan(db, org.id, "pro")
        assert token is not None
        return org.id, token

    return trio.run(create)


async def _signed_in(served: Served, pg_dsn: str) -> tuple[uuid.UUID, str, str]:
    org_id, token = await trio.to_thread.run_sync(_owner, pg_dsn)
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        r = await http.post("/api/v1/password/set", json={"token": token, "password": "a long enough passphrase 1"})
        assert r.status_code == 200, r.text
        return org_id, session_from(r), r.json()["csrf_token"]


def _socket(served: Served, *, cookie: str, query: str, origin: str | None, script):
    from websockets.sync.client import connect

    url = served.url.replace("http://", "ws://") + "/v1/responses?" + query
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}"}
    with connect(url, additional_headers=headers, origin=origin, open_timeout=10) as ws:
        return script(ws)


CREATE = {"type": "response.create", "model": "tiny", "input": "Hello", "max_output_tokens": 5, "temperature": 0}


async def test_playground_socket_with_the_session(served: Served, pg_dsn: str) -> None:
    org_id, cookie, csrf = await _signed_in(served, pg_dsn)

    def run(ws):
        ws.send(json.dumps(CREATE))
        return events_until_done(ws)

    query = f"csrf_token={csrf}&organization={org_id}"
    events = await in_thread(lambda: _socket(served, cookie=cookie, query=query, origin=served.url, script=run))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["output_tokens"] > 0
    # metered as the user's usage of that organization (no API key), like any API call
    import asyncio

    import asyncpg

    async def ledger() -> list:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for _ in range(100):  # the meter writes in batches, a few milliseconds after the response
                rows = await conn.fetch(
                    "SELECT user_id, api_key_id, output_tokens FROM usage_events WHERE org_id = $1", org_id
                )
                if rows:
                    return rows
                await asyncio.sleep(0.05)
            return []
        finally:
            await conn.close()

    rows = await trio_asyncio.aio_as_trio(ledger)()
    assert len(rows) == 1 and rows[0]["user_id"] is not None and rows[0]["api_key_id"] is None
    assert rows[0]["output_tokens"] == events[-1]["response"]["usage"]["output_tokens"]


@pytest.mark.parametrize("case", ["other_origin", "no_origin", "no_csrf", "wrong_csrf", "not_a_member", "bad_org"])
async def test_playground_socket_refusals(served: Served, pg_dsn: str, case: str) -> None:
    org_id, cookie, csrf = await _signed_in(served, pg_dsn)
    origin: str | None = served.url
    query = f"csrf_token={csrf}&organization={org_id}"
    if case == "other_origin":
        origin = "http://evil.example.com"
    elif case == "no_origin":
        origin = None
    elif case == "no_csrf":
        query = f"organization={org_id}"
    elif case == "wrong_csrf":
        query = f"csrf_token=x{csrf}&organization={org_id}"
    elif case == "not_a_member":
        query = f"csrf_token={csrf}&organization={served.org_id}"
    elif case == "bad_org":
        query = f"csrf_token={csrf}&organization=nope"

    def run(ws):
        return json.loads(ws.recv(timeout=30))

    first = await in_thread(lambda: _socket(served, cookie=cookie, query=query, origin=origin, script=run))
    assert first["type"] == "error", first
    if case in ("no_csrf", "wrong_csrf"):
        assert first["error"]["code"] == "csrf_failed"
