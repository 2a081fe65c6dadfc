"""RefreshTokens against the real PostgreSQL: rotation chains, reuse detection, expiry, revocation."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
import trio

from bitnet_actor.services.refresh import (
    TOKEN_PREFIX,
    InvalidTokenError,
    RefreshTokens,
    TokenReuseError,
)


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: timestamptz keeps microseconds

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(db, clock) -> RefreshTokens:
    return RefreshTokens(db, ttl_s=3600, max_lifetime_s=4 * 3600, clock=clock)


async def new_user(db) -> str:
    user_id = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", f"{uuid.uuid4().hex}@example.com")
    return str(user_id)


async def new_org(db) -> str:
    org_id = uuid.uuid4()
    async with db.transaction(org_id=org_id) as tx:
        await tx.execute("INSERT INTO organizations (id, name) VALUES ($1, $2)", org_id, f"org-{org_id.hex}")
    return str(org_id)


async def test_rotation_chain(db, tokens):
    user, org = await new_user(db), await new_org(db)
    first = await tokens.issue(user_id=user, org_id=org)
    assert first.startswith(TOKEN_PREFIX)

    second, grant = await tokens.rotate(first)
    assert (grant.user_id, grant.org_id) == (user, org)
    third, grant3 = await tokens.rotate(second)
    fourth, grant4 = await tokens.rotate(third)
    assert len({first, second, third, fourth}) == 4
    assert grant.family_id == grant3.family_id == grant4.family_id

    user_level = await tokens.issue(user_id=user, org_id=None)
    _, grant_none = await tokens.rotate(user_level)
    assert grant_none.org_id is None
    assert grant_none.family_id != grant.family_id


async def test_tokens_stored_only_as_sha256(db, tokens):
    user = await new_user(db)
    token = await tokens.issue(user_id=user, org_id=None)
    rows = await db.fetch(
        "SELECT t.token_hash FROM refresh_tokens t JOIN refresh_token_families f ON f.id = t.family_id"
        " WHERE f.user_id = $1",
        uuid.UUID(user),
    )
    assert [bytes(r["token_hash"]) for r in rows] == [hashlib.sha256(token.encode()).digest()]


async def test_reuse_revokes_the_whole_family(db, tokens):
    user = await new_user(db)
    first = await tokens.issue(user_id=user, org_id=None)
    other_session = await tokens.issue(user_id=user, org_id=None)
    second, grant = await tokens.rotate(first)
    newest, _ = await tokens.rotate(second)

    with pytest.raises(TokenReuseError) as caught:
        await tokens.rotate(first)  # the thief (or the user) replays a spent token
    assert caught.value.family_id == grant.family_id
    assert caught.value.user_id == user

    with pytest.raises(InvalidTokenError, match="revoked"):
        await tokens.rotate(newest)  # the newest token of the family is dead too
    with pytest.raises(InvalidTokenError, match="revoked"):
        await tokens.rotate(second)
    reason = await db.fetchval(
        "SELECT revoke_reason FROM refresh_token_families WHERE id = $1", uuid.UUID(grant.family_id)
    )
    assert reason == "reuse"
    await tokens.rotate(other_session)  # other sessions of the user are untouched


async def test_concurrent_use_of_one_token_counts_as_reuse(db, tokens):
    user = await new_user(db)
    token = await tokens.issue(user_id=user, org_id=None)
    results: list[object] = []

    async def use() -> None:
        try:
            results.append(await tokens.rotate(token))
        except InvalidTokenError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(use)
        nursery.start_soon(use)
    winners = [r for r in results if isinstance(r, tuple)]
    losers = [r for r in results if isinstance(r, TokenReuseError)]
    assert len(winners) == 1
    assert len(losers) == 1
    with pytest.raises(InvalidTokenError, match="revoked"):
        await tokens.rotate(winners[0][0])


async def test_expired_tokens_rejected(db, tokens, clock):
    user = await new_user(db)
    token = await tokens.issue(user_id=user, org_id=None)
    clock.advance(3599)
    token, grant = await tokens.rotate(token)
    assert grant.expires_at == pytest.approx(clock() + 3600)
    clock.advance(3600)
    with pytest.raises(InvalidTokenError, match="expired"):
        await tokens.rotate(token)


async def test_family_lifetime_caps_every_token(db, tokens, clock):
    user = await new_user(db)
    start = clock()
    token = await tokens.issue(user_id=user, org_id=None)
    for _ in range(3):
        clock.advance(3500)
        token, grant = await tokens.rotate(token)
    assert grant.expires_at == pytest.approx(start + 4 * 3600)  # not clock() + 3600
    clock.advance(start + 4 * 3600 - clock())
    with pytest.raises(InvalidTokenError, match="expired"):
        await tokens.rotate(token)


async def test_revoke_and_revoke_user(db, tokens):
    alice, bob = await new_user(db), await new_user(db)
    logout = await tokens.issue(user_id=alice, org_id=None)
    await tokens.revoke(logout)
    with pytest.raises(InvalidTokenError, match="revoked"):
        await tokens.rotate(logout)
    await tokens.revoke(logout)  # again: nothing happens
    await tokens.revoke("bnr_not-a-token")

    one = await tokens.issue(user_id=alice, org_id=None)
    two, _ = await tokens.rotate(await tokens.issue(user_id=alice, org_id=None))
    bobs = await tokens.issue(user_id=bob, org_id=None)
    assert await tokens.revoke_user(alice) == 2
    assert await tokens.revoke_user(alice) == 0
    for token in (one, two):
        with pytest.raises(InvalidTokenError, match="revoked"):
            await tokens.rotate(token)
    bobs, grant = await tokens.rotate(bobs)

    assert await tokens.revoke_family(grant.family_id) is True
    assert await tokens.revoke_family(grant.family_id) is False
    with pytest.raises(InvalidTokenError, match="revoked"):
        await tokens.rotate(bobs)


async def test_unknown_malformed_and_disabled(db, tokens):
    for junk in ("", "abc", TOKEN_PREFIX + "x" * 43, "xxxx" + "y" * 43):
        with pytest.raises(InvalidTokenError) as caught:
            await tokens.rotate(junk)
        assert not isinstance(caught.value, TokenReuseError)
    user = await new_user(db)
    token = await tokens.issue(user_id=user, org_id=None)
    await db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", uuid.UUID(user))
    with pytest.raises(InvalidTokenError, match="disabled"):
        await tokens.rotate(token)


async def test_purge_deletes_ended_families(db, tokens, clock):
    user = await new_user(db)
    await tokens.issue(user_id=user, org_id=None)
    live = await tokens.issue(user_id=user, org_id=None)
    await tokens.revoke(await tokens.issue(user_id=user, org_id=None))
    clock.advance(8 * 86400)  # the revoked family is old enough; the live one expired on the way
    live_clock_tokens = RefreshTokens(db, clock=clock)
    assert await live_clock_tokens.purge() >= 3
    with pytest.raises(InvalidTokenError, match="unknown"):
        await tokens.rotate(live)
