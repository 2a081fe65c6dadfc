"""The model registry on real PostgreSQL, as the service role (row-level security on): versions created
pending and published once, immutable after; aliases (latest moves by itself); resolution of name,
name:version and name@alias; deprecate; delete refused while routed; lineage; tenants apart."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.errors import ConflictError, QueryError
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ValidationError
from bitnet_actor.services.models import registry
from bitnet_actor.stores import app_dsn
from bitnet_actor.stores.postgres import open_database

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bitnet_actor.stores.postgres import Database

FACTS = {"architecture": "bitnet", "parameters": 1234, "bytes": 5678}


@pytest.fixture
async def app(db: Database, pg_dsn: str) -> AsyncIterator[Database]:
    async with open_database(app_dsn(pg_dsn, "bitnet_app"), max_size=2) as app_db:
        yield app_db


async def new_org(db: Database) -> uuid.UUID:
    org: uuid.UUID = await db.fetchval(
        "INSERT INTO organizations (name) VALUES ($1) RETURNING id", f"m-{uuid.uuid4().hex[:8]}"
    )
    return org


async def blob(app: Database, org: uuid.UUID) -> tuple[uuid.UUID, str]:
    sha = uuid.uuid4().hex * 2
    async with app.transaction(org_id=org) as tx:
        blob_id: uuid.UUID = await tx.fetchval(
            "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, 10, 'gguf')"
            " RETURNING id",
            org,
            sha,
            f"sha256/{sha}",
        )
    return blob_id, sha


async def published(app: Database, org: uuid.UUID, name: str, version: str, **kw: object) -> registry.ModelVersion:
    blob_id, sha = await blob(app, org)
    v = await registry.create_version(app, org, name=name, version=version, blob_id=blob_id, sha256=sha, **kw)  # type: ignore[arg-type]
    assert v.state == "pending" and v.aliases == ()
    return await registry.publish(app, org, v.id, facts=FACTS)


async def test_versions_aliases_and_resolution(db: Database, app: Database) -> None:
    org = await new_org(db)
    v1 = await published(app, org, "chat", "1")
    assert v1.state == "ready" and v1.aliases == ("latest",) and v1.facts == FACTS
    v2 = await published(app, org, "chat", "2")
    assert (await registry.resolve(app, org, "chat")).id == v2.id  # latest moved
    assert (await registry.resolve(app, org, "chat@latest")).id == v2.id
    assert (await registry.resolve(app, org, "chat:1")).id == v1.id
    await registry.set_alias(app, org, "chat", "stable", "1")
    assert (await registry.resolve(app, org, "chat@stable")).id == v1.id
    await registry.set_alias(app, org, "chat", "stable", "2")  # moved by the user
    assert (await registry.resolve(app, org, "chat@stable")).id == v2.id
    with pytest.raises(ValidationError, match="moves to each new published version"):
        await registry.set_alias(app, org, "chat", "latest", "1")
    with pytest.raises(NotFoundError):
        await registry.resolve(app, org, "chat@canary")
    with pytest.raises(ConflictStateError, match="already has a version '2'"):
        await registry.create_version(app, org, name="chat", version="2")
    pending = await registry.create_version(app, org, name="chat", version="3")
    with pytest.raises(NotFoundError, match="not ready"):
        await registry.resolve(app, org, "chat:3")
    with pytest.raises(ConflictStateError, match="pending, not published"):
        await registry.set_alias(app, org, "chat", "stable", "3")
    await registry.fail(app, org, pending.id, "config.json: unknown architecture 'gpt9'")
    failed = await registry.get_version(app, org, "chat", "3")
    assert failed.state == "failed" and "gpt9" in (failed.error or "")
    for bad in ("", "bad name", "../x", "a" * 101):
        with pytest.raises(ValidationError):
            await registry.create_version(app, org, name=bad, version="1")
    listed = await registry.list_models(app, org)
    assert [m["name"] for m in listed if not m["platform"]] == ["chat"]
    assert listed[0]["aliases"] == {"latest": "2", "stable": "2"}


async def test_a_published_version_is_immutable(db: Database, app: Database) -> None:
    org = await new_org(db)
    v = await published(app, org, "imm", "1")
    other_blob, other_sha = await blob(app, org)
    for column, value in (("blob_id", other_blob), ("sha256", other_sha), ("facts", {"x": 1}),
                          ("version", "9"), ("state", "pending")):  # fmt: skip
        with pytest.raises(ConflictError, match="is published and cannot change"):
            async with app.transaction(org_id=org) as tx:
                await tx.execute(f"UPDATE model_versions SET {column} = $2 WHERE id = $1", v.id, value)
    updated = await registry.update_metadata(app, org, "imm", "1", evals={"mmlu": 0.41}, description="small")
    assert updated.evals == {"mmlu": 0.41} and updated.description == "small" and updated.sha256 == v.sha256
    with pytest.raises(ValidationError, match="evals must be at most"):
        await registry.update_metadata(app, org, "imm", "1", evals={"x": "y" * 20_000}, description=None)
    dep = await registry.deprecate(app, org, "imm", "1")
    assert dep.state == "deprecated" and (await registry.resolve(app, org, "imm")).id == v.id  # still serves


async def test_delete_is_refused_while_routed_and_latest_falls_back(db: Database, app: Database) -> None:
    org = await new_org(db)
    v1 = await published(app, org, "ab", "1")
    v2 = await published(app, org, "ab", "2")
    async with app.transaction(org_id=org) as tx:
        await tx.execute(
            "INSERT INTO model_routes (org_id, public_name, targets) VALUES ($1, 'assistant', $2)",
            org,
            ([{"version_id": str(v1.id), "weight": 90}, {"version_id": str(v2.id), "weight": 10}]),
        )
    with pytest.raises(ConflictStateError, match="receives traffic from route"):
        await registry.delete_version(app, org, "ab", "2")
    async with app.transaction(org_id=org) as tx:
        await tx.execute(
            "UPDATE model_routes SET targets = $2 WHERE org_id = $1",
            org,
            ([{"version_id": str(v1.id), "weight": 100}, {"version_id": str(v2.id), "weight": 0}]),
        )
    key = await registry.delete_version(app, org, "ab", "2")
    assert key is not None and key.startswith("sha256/")  # its blob is no longer used: the caller deletes it
    assert (await registry.resolve(app, org, "ab")).id == v1.id  # latest back on the newest remaining
    with pytest.raises(NotFoundError):
        await registry.delete_version(app, org, "ab", "2")


async def test_lineage_walks_to_the_root(db: Database, app: Database) -> None:
    org = await new_org(db)
    root = await published(app, org, "base", "1")
    child = await published(
        app, org, "base", "1-tq2", parent_id=root.id, origin="quantized",
        origin_details={"tool": "bitnet-actor convert", "options": {"to": "tq2_0"}, "source_sha256": root.sha256},
    )  # fmt: skip
    grandchild = await published(app, org, "base-chat", "1", parent_id=child.id, origin="converted")
    chain = await registry.lineage(app, org, "base-chat", "1")
    assert [v.id for v in chain] == [grandchild.id, child.id, root.id]
    assert chain[1].origin_details["source_sha256"] == root.sha256
    with pytest.raises(NotFoundError, match="no such parent"):
        await registry.create_version(app, org, name="x", version="1", parent_id=uuid.uuid4())


async def test_tenants_see_only_their_own_and_the_platforms(db: Database, app: Database) -> None:
    a, b = await new_org(db), await new_org(db)
    mine = await published(app, a, "secret-model", "1")
    await db.execute(
        "INSERT INTO model_versions (org_id, name, version, state, local_path, origin, published_at)"
        " VALUES (NULL, $1, '1', 'ready', '/models/x', 'platform', now()) ON CONFLICT DO NOTHING",
        "platform-shared",
    )
    assert (await registry.resolve(app, b, "platform-shared:1")).org_id is None
    with pytest.raises(NotFoundError):
        await registry.resolve(app, b, "secret-model:1")
    with pytest.raises(NotFoundError):
        await registry.lineage(app, b, "secret-model", "1")
    with pytest.raises(NotFoundError):
        await registry.delete_version(app, b, "secret-model", "1")
    names_b = {m["name"] for m in await registry.list_models(app, b)}
    assert "secret-model" not in names_b and "platform-shared" in names_b
    with pytest.raises(QueryError, match="row-level security"):  # b cannot put a version into a's models
        async with app.transaction(org_id=b) as tx:
            await tx.execute("INSERT INTO model_versions (org_id, name, version) VALUES ($1, 'x', '1')", a)
    async with app.transaction(org_id=b) as tx:  # nor touch the platform's
        status = await tx.execute("UPDATE model_versions SET description = 'hacked' WHERE org_id IS NULL")
    assert status.split()[-1] == "0"
    assert (await registry.resolve(app, a, "secret-model")).id == mine.id


async def test_an_object_shared_with_another_org_is_not_deleted(db: Database, app: Database) -> None:
    a, b = await new_org(db), await new_org(db)
    sha = uuid.uuid4().hex * 2
    for org in (a, b):  # the same bytes uploaded twice: one content-addressed object, two blob rows
        async with app.transaction(org_id=org) as tx:
            blob_id = await tx.fetchval(
                "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, 1, 'gguf')"
                " RETURNING id",
                org,
                sha,
                f"sha256/{sha}",
            )
        v = await registry.create_version(app, org, name="same", version="1", blob_id=blob_id, sha256=sha)
        await registry.publish(app, org, v.id, facts=FACTS)
    assert await registry.delete_version(app, a, "same", "1") is None  # b's blob still holds the object
    assert await registry.delete_version(app, b, "same", "1") == f"sha256/{sha}"
