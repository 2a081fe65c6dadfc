"""Service functions the portal added: session flash messages, password-reset mail, audit-log filters and the
per-key limit rule (shared with the API)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.services import audit, tenancy
from bitnet_actor.services.billing import plans
from bitnet_actor.services.email import MemoryEmailSender
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.sessions import Flash, SessionStore

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore


async def test_flashes_are_per_session_one_shot_and_bounded(redis: RedisStore) -> None:
    store = SessionStore(redis)
    a, b = await store.create(uuid.uuid4()), await store.create(uuid.uuid4())
    await store.add_flash(a.id, Flash("success", "one"))
    await store.add_flash(a.id, Flash("error", "two"))
    assert await store.pop_flashes(b.id) == []
    assert await store.pop_flashes(a.id) == [Flash("success", "one"), Flash("error", "two")]
    assert await store.pop_flashes(a.id) == []
    for i in range(15):
        await store.add_flash(a.id, Flash("info", str(i)))
    assert [f.text for f in await store.pop_flashes(a.id)] == [str(i) for i in range(5, 15)]


async def make_user(db: Database, email: str) -> uuid.UUID:
    user_id: uuid.UUID = await db.fetchval(
        "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id", email
    )
    return user_id


async def test_password_reset_mails_only_existing_accounts(db: Database) -> None:
    mailer = MemoryEmailSender()
    email = f"reset-{uuid.uuid4().hex[:8]}@Example.COM"
    await make_user(db, email)
    await tenancy.request_password_reset(db, mailer, email="nobody-" + email, link_base="http://x/reset")
    assert mailer.outbox == []
    await tenancy.request_password_reset(db, mailer, email=email.lower(), link_base="http://x/reset")
    (message,) = mailer.outbox
    assert message.to == email and "http://x/reset?token=" in message.body
    token = message.body.split("token=")[1].split()[0]
    user_id = await tenancy.set_password_with_token(db, token=token, password="a long enough passphrase")
    assert user_id == await db.fetchval("SELECT id FROM users WHERE email = $1", email)
    with pytest.raises(ValidationError):
        await tenancy.request_password_reset(db, mailer, email="not an address", link_base="http://x/reset")


async def test_audit_filters(db: Database) -> None:
    owner = await make_user(db, f"audit-{uuid.uuid4().hex[:8]}@example.com")
    org = await tenancy.create_org(
        db, name=f"audit-{uuid.uuid4().hex[:8]}", owner=owner, actor=audit.Actor(user_id=owner)
    )
    await tenancy.update_org(db, org.id, name=f"renamed-{uuid.uuid4().hex[:8]}", actor=audit.Actor(user_id=owner))
    await tenancy.update_org(db, org.id, name=f"again-{uuid.uuid4().hex[:8]}", actor=audit.Actor())
    every = await audit.list_entries(db, org.id)
    assert [e.action for e in every] == ["org.updated", "org.updated", "org.created"]
    assert [e.seq for e in await audit.list_entries(db, org.id, action="org.updated")] == [3, 2]
    assert [e.seq for e in await audit.list_entries(db, org.id, actor_user_id=owner)] == [2, 1]
    assert [e.seq for e in await audit.list_entries(db, org.id, action="org.updated", actor_user_id=owner)] == [2]
    now = datetime.now(UTC)
    assert await audit.list_entries(db, org.id, since=now + timedelta(minutes=1)) == []
    assert (
        len(await audit.list_entries(db, org.id, since=now - timedelta(minutes=5), until=now + timedelta(minutes=5)))
        == 3
    )
    assert await audit.list_entries(db, org.id, until=now - timedelta(days=1)) == []
    assert await audit.list_actions(db, org.id) == ["org.created", "org.updated"]


def test_key_limits_tighten_never_loosen() -> None:
    profile = plans.OrgProfile(
        org_id=uuid.uuid4(), plan=None, rpm=None, tpm=None, key_rpm=60, key_tpm=None, key_concurrency=4,  # type: ignore[arg-type]
        monthly_token_quota=None, quota_mode="hard",
    )  # fmt: skip
    assert plans.key_limits(profile, {}) == {}
    assert plans.key_limits(profile, {"rpm": 10, "tpm": 10**9, "max_concurrency": None}) == {"rpm": 10, "tpm": 10**9}
    with pytest.raises(ValidationError, match="per-key limit of 60") as info:
        plans.key_limits(profile, {"rpm": 61})
    assert info.value.field == "rpm"
    with pytest.raises(ValidationError) as info:
        plans.key_limits(profile, {"max_concurrency": -1})
    assert info.value.field == "max_concurrency" and "max_concurrency must be" in str(info.value)
