"""Regional object stores under EncryptedObjects, on real PostgreSQL and filesystem stores."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from bitnet_actor.config import Settings
from bitnet_actor.errors import StoreUnavailableError
from bitnet_actor.services.models import EncryptedObjects, LocalKeyProvider
from bitnet_actor.services.models.crypto import DEFAULT_CHUNK_SIZE as C
from bitnet_actor.stores import region_stores
from bitnet_actor.stores.objects import FilesystemObjectStore, ObjectStore, RegionStores
from tests.services.models.test_crypto import MASTER, data_of, read_all

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

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
