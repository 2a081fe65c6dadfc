"""Regional object stores under EncryptedObjects, and moving an organization's objects between regions
(services/models/relocation.py, behind services/regions.set_region), on real PostgreSQL, filesystem stores and
(one case) the real SeaweedFS S3 server."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.config import Settings
from bitnet_actor.errors import StoreError, StoreUnavailableError
from bitnet_actor.services import regions
from bitnet_actor.services.errors import ConflictStateError
from bitnet_actor.services.models import EncryptedObjects, LocalKeyProvider
from bitnet_actor.services.models.crypto import DEFAULT_CHUNK_SIZE as C
from bitnet_actor.stores import region_stores
from bitnet_actor.stores.objects import FilesystemObjectStore, ObjectStore, RegionStores
from tests.services.models.test_crypto import MASTER, data_of, read_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from bitnet_actor.services.models.relocation import ObjectMoved
    from tests.services.models.conftest import Dbs
    from tests.stores.conftest import S3Server


def files_under(store: ObjectStore) -> list[Path]:
    assert isinstance(store, FilesystemObjectStore)
    return [p for p in (store.root / "sha256").rglob("*") if p.is_file()]


@pytest.fixture(params=["fs", "s3"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RegionStores]:
    """Region eu on a filesystem store; region us on another one, or on S3; the default store in the data dir."""
    if request.param == "fs":
        settings = Settings(data_dir=tmp_path, region_stores=f"eu=file://{tmp_path}/eu,us=file://{tmp_path}/us")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        settings = Settings(
            data_dir=tmp_path, s3_endpoint=server.endpoint_url, s3_access_key_id=server.access_key_id,
            s3_secret_access_key=server.secret_access_key, s3_region=server.region,
            region_stores=f"eu=file://{tmp_path}/eu,us=s3://{server.bucket}/relocation-{uuid.uuid4().hex}",
        )  # fmt: skip
    async with region_stores(settings.validated()) as made:
        yield made


async def org_in(dbs: Dbs, region: str) -> uuid.UUID:
    org = await dbs.new_org()
    await dbs.owner.execute("UPDATE organizations SET region = $2 WHERE id = $1", org, region)
    return org


async def recorded(dbs: Dbs, key: str) -> str | None:
    region: str | None = await dbs.owner.fetchval("SELECT region FROM model_data_keys WHERE object_key = $1", key)
    return region


@pytest.mark.parametrize("stores", ["fs"], indirect=True)
async def test_objects_go_to_the_home_regions_store(stores: RegionStores, dbs: Dbs) -> None:
    objects = EncryptedObjects(stores, dbs.app, LocalKeyProvider([MASTER]))
    eu, us, default = stores.for_region("eu"), stores.for_region("us"), stores.default
    org = await org_in(dbs, "eu")
    plaintext = data_of(3 * C + 17, 5)
    put = await objects.put(org, plaintext)
    assert await eu.exists(put.info.key) and not await us.exists(put.info.key)
    assert not await default.exists(put.info.key) and await recorded(dbs, put.info.key) == "eu"
    assert await read_all(objects, org, put.info.key) == plaintext
    assert await objects.read_range(org, put.info.key, C - 2, C + 9) == plaintext[C - 2 : C + 9]

    elsewhere = await org_in(dbs, "ap")  # a region without a store of its own: the default store
    other = await objects.put(elsewhere, b"ap's bytes")
    assert await default.exists(other.info.key) and await recorded(dbs, other.info.key) is None
    platform = await objects.put(None, b"everyone's")
    assert await default.exists(platform.info.key) and await recorded(dbs, platform.info.key) is None
    assert await read_all(objects, org, platform.info.key) == b"everyone's"

    await objects.delete(org, put.info.key)
    assert files_under(eu) == []
    second = await objects.put(org, b"shredded")
    assert await objects.shred_org(org) == 1
    assert not await eu.exists(second.info.key)

    # A recorded region this process has no store for is named, not looked for in the default store.
    third = await objects.put(elsewhere, b"x")
    await dbs.owner.execute("UPDATE model_data_keys SET region = 'gone' WHERE object_key = $1", third.info.key)
    with pytest.raises(StoreUnavailableError, match="region 'gone'"):
        await read_all(objects, elsewhere, third.info.key)


async def test_move_copies_verifies_switches_and_deletes(stores: RegionStores, dbs: Dbs) -> None:
    objects = EncryptedObjects(stores, dbs.app, LocalKeyProvider([MASTER]))
    eu, us = stores.for_region("eu"), stores.for_region("us")
    org = await org_in(dbs, "eu")
    plaintexts = [data_of(2 * C + 5, 1), b"small", b""]
    keys = [(await objects.put(org, p)).info.key for p in plaintexts]
    await dbs.owner.execute(
        "INSERT INTO model_blobs (org_id, sha256, object_key, bytes, format) VALUES ($1, $2, $3, 5, 'gguf')",
        org, hashlib.sha256(b"small").hexdigest(), keys[1],
    )  # fmt: skip
    neighbour = await org_in(dbs, "eu")
    theirs = await objects.put(neighbour, b"not moved")

    with pytest.raises(ConflictStateError, match="pass --move-data"):
        await regions.set_region(dbs.app, org, "us")
    seen: list[ObjectMoved] = []
    change = await regions.set_region(dbs.app, org, "us", objects=objects, on_object=seen.append)
    assert (change.before, change.after) == ("eu", "us")
    assert change.moved is not None and (change.moved.moved, change.moved.cleaned) == (3, 0)
    assert change.moved.bytes == sum([(await us.stat(k)).size for k in keys])
    assert [(m.index, m.total, m.source, m.target, m.copied) for m in seen] == [
        (i, 3, "eu", "us", True) for i in (1, 2, 3)
    ]
    assert [p.name for p in files_under(eu)] == [theirs.info.sha256]  # only the other organization's is left
    for key, plaintext in zip(keys, plaintexts, strict=True):
        assert await us.exists(key) and await recorded(dbs, key) == "us"
        assert await read_all(objects, org, key) == plaintext  # the same data key: decrypts as before
    assert await objects.read_range(org, keys[0], C, C + 3) == plaintexts[0][C : C + 3]
    assert await dbs.owner.fetchval("SELECT region FROM organizations WHERE id = $1", org) == "us"
    audit = await dbs.owner.fetchval(
        "SELECT details FROM audit_log WHERE org_id = $1 AND action = 'org.region_changed'", org
    )
    assert audit == {"from": "eu", "to": "us", "objects_moved": 3}

    again = await regions.set_region(dbs.app, org, "us", objects=objects, on_object=seen.append)
    assert again.moved is not None and (again.moved.moved, again.moved.cleaned) == (0, 0) and len(seen) == 3

    new = await objects.put(org, b"after the move")  # new objects follow the new region
    assert await us.exists(new.info.key) and await recorded(dbs, new.info.key) == "us"


@pytest.mark.parametrize("stores", ["fs"], indirect=True)
async def test_an_interrupted_move_resumes(stores: RegionStores, dbs: Dbs) -> None:
    objects = EncryptedObjects(stores, dbs.app, LocalKeyProvider([MASTER]))
    eu, us = stores.for_region("eu"), stores.for_region("us")
    org = await org_in(dbs, "us")
    copied, switched, untouched = [(await objects.put(org, data_of(C + i, i))).info.key for i in (1, 2, 3)]
    # A crash after copying `copied` (its row still says us), and one after switching `switched` (its old
    # copy still in us).
    for key in (copied, switched):
        assert (await eu.put(await us.get(key))).key == key
    await dbs.owner.execute("UPDATE model_data_keys SET region = 'eu' WHERE object_key = $1", switched)

    seen: list[ObjectMoved] = []
    change = await regions.set_region(dbs.app, org, "eu", objects=objects, on_object=seen.append)
    assert change.moved is not None and (change.moved.moved, change.moved.cleaned) == (2, 1)
    assert {(m.key, m.copied) for m in seen} == {(copied, False), (untouched, True)}  # the first was there
    assert files_under(us) == []
    for key in (copied, switched, untouched):
        assert await eu.exists(key) and await recorded(dbs, key) == "eu"
        assert len(await read_all(objects, org, key)) > C


@pytest.mark.parametrize("stores", ["fs"], indirect=True)
async def test_a_bad_copy_switches_nothing(stores: RegionStores, dbs: Dbs) -> None:
    objects = EncryptedObjects(stores, dbs.app, LocalKeyProvider([MASTER]))
    eu, us = stores.for_region("eu"), stores.for_region("us")
    assert isinstance(us, FilesystemObjectStore)
    org = await org_in(dbs, "eu")
    key = (await objects.put(org, data_of(2 * C, 9))).info.key
    digest = key.removeprefix("sha256/")
    bad = us.root / "sha256" / digest[:2] / digest[2:4] / digest
    bad.parent.mkdir(parents=True)
    bad.write_bytes((await eu.get(key))[:100])  # a truncated object under the right key
    with pytest.raises(StoreError, match="does not verify"):
        await regions.set_region(dbs.app, org, "us", objects=objects)
    assert await recorded(dbs, key) == "eu" and await eu.exists(key)
    assert await dbs.owner.fetchval("SELECT region FROM organizations WHERE id = $1", org) == "eu"
    bad.unlink()
    change = await regions.set_region(dbs.app, org, "us", objects=objects)
    assert change.moved is not None and change.moved.moved == 1
    assert await read_all(objects, org, key) == data_of(2 * C, 9)


@pytest.mark.parametrize("stores", ["fs"], indirect=True)
async def test_uploads_in_progress_and_shared_stores(stores: RegionStores, dbs: Dbs) -> None:
    objects = EncryptedObjects(stores, dbs.app, LocalKeyProvider([MASTER]))
    org = await org_in(dbs, "eu")
    key = (await objects.put(org, b"part")).info.key
    upload = await dbs.owner.fetchval("INSERT INTO model_uploads (org_id) VALUES ($1) RETURNING id", org)
    with pytest.raises(ConflictStateError, match="1 upload\\(s\\) in progress"):
        await regions.set_region(dbs.app, org, "us", objects=objects)
    await dbs.owner.execute("UPDATE model_uploads SET state = 'aborted' WHERE id = $1", upload)

    # ap and ch have no stores of their own: both use the default one, so nothing is copied
    await regions.set_region(dbs.app, org, "ap", objects=objects)
    assert await stores.default.exists(key) and await recorded(dbs, key) is None
    seen: list[ObjectMoved] = []
    change = await regions.set_region(dbs.app, org, "ch", objects=objects, on_object=seen.append)
    assert change.moved is not None and change.moved.moved == 0 and seen == []
    assert await read_all(objects, org, key) == b"part"
