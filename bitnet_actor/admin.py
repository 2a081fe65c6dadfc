"""Operator commands: ``bitnet-actor admin ...`` and ``bitnet-actor audit verify``.

They use the same configuration as ``serve``: the configured PostgreSQL, or the embedded one of the same
data dir (joining it while a server runs, starting it for the command otherwise). Key revocation is
announced over Redis so running replicas drop the key from their caches at once.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import trio_asyncio

from bitnet_actor.services import api_keys, audit, tenancy
from bitnet_actor.services.errors import NotFoundError, ValidationError
from bitnet_actor.stores import open_database_only
from bitnet_actor.stores.embedded import EmbeddedRedis, redis_answers
from bitnet_actor.stores.redis import open_redis

if TYPE_CHECKING:
    from bitnet_actor.config import Settings
    from bitnet_actor.stores.redis import RedisStore

__all__ = ["create_key", "create_org", "revoke_key", "verify_audit"]

log = logging.getLogger(__name__)


def _link(settings: Settings, path: str, token: str) -> str:
    return f"{settings.base_url}{path}?token={token}"


async def create_org(settings: Settings, *, name: str, owner_email: str) -> str:
    """Create an organization and its owner (if new); return the text to print."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org, _, token = await tenancy.admin_create_org(db, name=name, owner_email=owner_email)
    lines = [f"created organization {org.name} ({org.id}) owned by {owner_email}"]
    if token:
        lines.append(f"one-time link to set the owner's password (24 h): {_link(settings, '/password/set', token)}")
    return "\n".join(lines)


def _scopes(raw: str) -> list[str]:
    scopes = [s.strip() for s in raw.split(",") if s.strip()]
    if not scopes:
        raise ValidationError("--scopes needs at least one scope", field="scopes")
    return scopes


async def create_key(
    settings: Settings,
    *,
    org: str,
    name: str,
    scopes: str,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrency: int | None = None,
) -> str:
    """Create an API key (with its own limits, if given); return the key (the only thing printed)."""
    async with trio_asyncio.open_loop(), open_database_only(settings) as db:
        org_id = await tenancy.org_id_by_name(db, org)
        secret, _ = await api_keys.create_key(
            db,
            org_id=org_id,
            name=name,
            scopes=_scopes(scopes),
            actor=audit.Actor(user_agent="bitnet-actor admin"),
            rpm=rpm,
            tpm=tpm,
            max_concurrency=max_concurrency,
        )
    return secret


async def revoke_key(settings: Settings, *, org: str, name: str) -> str:
    """Revoke every active key called ``name`` in ``org``; announce it to running replicas."""
    async with trio_asyncio.open_loop(), AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_database_only(settings))
        org_id = await tenancy.org_id_by_name(db, org)
        keys = [k for k in await api_keys.list_keys(db, org_id) if k.name == name and k.revoked_at is None]
        if not keys:
            raise NotFoundError(f"organization {org!r} has no active key named {name!r}")
        redis = await _running_redis(settings, stack)
        actor = audit.Actor(user_agent="bitnet-actor admin")
        for key in keys:
            if redis is not None:
                await api_keys.revoke_key(db, redis, org_id=org_id, key_id=key.id, actor=actor)
            else:
                await api_keys.revoke_key_quietly(db, org_id=org_id, key_id=key.id, actor=actor)
    return f"revoked {len(keys)} key{'s' if len(keys) != 1 else ''} named {name} in {org}"


async def _running_redis(settings: Settings, stack: AsyncExitStack) -> RedisStore | None:
    # Configured Redis: replicas listen there. Embedded: only a running server's Redis has listeners.
    if settings.redis_url:
        return await stack.enter_async_context(open_redis(settings.redis_url))
    embedded = EmbeddedRedis(settings.data_dir)
    if embedded.socket.exists() and redis_answers(embedded.socket):
        return await stack.enter_async_context(open_redis(embedded.url))
    log.info("no running server on this data dir: nothing to notify")
    return None


async def verify_audit(settings: Settings) -> tuple[bool, str]:
    """Check the audit log's hash chains; return (intact, text to print)."""
    async with trio_asyncio.open_loop(), open_database_only(settings, as_owner=True) as db:
        checked, bad = await audit.verify(db)
    if bad is None:
        return True, f"audit log intact: {checked} rows verified"
    return False, (
        f"audit log tampered: first bad row id={bad.row_id} (organization {bad.org_id}, seq {bad.seq}): {bad.reason}"
    )
