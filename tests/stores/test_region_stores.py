"""Tests for bitnet_actor.stores.objects.regions (RegionStores) and stores.region_stores (built from settings),
on real filesystem stores and, for s3:// URLs, the real SeaweedFS server."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import trio

from bitnet_actor.config import Settings
from bitnet_actor.errors import StoreUnavailableError
from bitnet_actor.stores import region_stores
from bitnet_actor.stores.objects import FilesystemObjectStore, ObjectStore, RegionStores, S3ObjectStore

if TYPE_CHECKING:
    from pathlib import Path

    from tests.stores.conftest import S3Server


def fs(root: Path) -> FilesystemObjectStore:
    return FilesystemObjectStore(root, signing_key=b"k", base_url="http://x")


async def test_placement_falls_back_to_the_default_and_reads_are_strict(tmp_path: Path) -> None:
    opened: list[str] = []

    def open_store(url: str) -> ObjectStore:
        opened.append(url)
        return fs(tmp_path / url.removeprefix("file:///"))

    default = fs(tmp_path / "default")
    urls = {"eu": "file:///eu", "eu2": "file:///eu", "us": "file:///us"}
    async with RegionStores(default, urls, open_store=open_store) as stores:
        assert stores.regions == ("eu", "eu2", "us")
        assert opened == []  # opened on first use
        assert (stores.placement("eu"), stores.placement("ap"), stores.placement(None)) == ("eu", None, None)
        assert stores.for_region("ap") is default and stores.for_region(None) is default
        eu = stores.for_region("eu")
        assert stores.for_region("eu2") is eu and stores.stored_in("eu") is eu  # one instance per URL
        assert stores.for_region("us") is not eu and opened == ["file:///eu", "file:///us"]
        assert stores.same_store("eu", "eu2") and not stores.same_store("eu", "us")
        assert stores.same_store(None, "ap") and not stores.same_store(None, "eu")
        with pytest.raises(StoreUnavailableError, match=r"region 'ap'.*BITNET_REGION_STORES"):
            stores.stored_in("ap")  # recorded there, but not configured here: never silently the default
        info = await eu.put(b"in eu")
        assert await eu.get(info.key) == b"in eu" and not await default.exists(info.key)
        assert len(stores.opened()) == 3
    with pytest.raises(ValueError, match="open_store"):
        RegionStores(default, urls)


async def test_closed_stores_open_nothing_more(tmp_path: Path) -> None:
    stores = RegionStores(fs(tmp_path / "d"), {"eu": "file:///eu"}, open_store=lambda url: fs(tmp_path / "eu"))
    await stores.aclose()
    await stores.aclose()  # idempotent
    assert stores.for_region("ap") is stores.default  # nothing to open
    with pytest.raises(trio.ClosedResourceError):
        stores.for_region("eu")


async def test_a_region_on_the_default_url_shares_the_default_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, region_stores=f"eu=file://{tmp_path / 'objects'},us=file://{tmp_path}/us")
    async with region_stores(settings) as stores:
        assert isinstance(stores.default, FilesystemObjectStore) and stores.default.root == tmp_path / "objects"
        assert stores.for_region("eu") is stores.default and stores.same_store("eu", None)
        us = stores.for_region("us")
        assert isinstance(us, FilesystemObjectStore) and us.root == tmp_path / "us"
        info = await us.put(b"x")
        assert (tmp_path / "us" / "sha256").is_dir() and not await stores.default.exists(info.key)


async def test_s3_region_stores_use_the_s3_settings_and_a_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"regions-{uuid.uuid4().hex}"
    settings = Settings(
        data_dir=tmp_path,
        s3_endpoint=s3_server.endpoint_url,
        s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=s3_server.secret_access_key,
        s3_region=s3_server.region,
        region_stores=f"eu=s3://{s3_server.bucket}/{prefix}/eu,us=s3://{s3_server.bucket}/{prefix}/us",
    ).validated()
    async with region_stores(settings) as stores:
        assert isinstance(stores.default, FilesystemObjectStore)  # no BITNET_S3_BUCKET: the data dir's
        eu, us = stores.for_region("eu"), stores.for_region("us")
        assert isinstance(eu, S3ObjectStore) and isinstance(us, S3ObjectStore)
        info = await eu.put(b"only in eu")
        assert await eu.get(info.key) == b"only in eu"
        assert not await us.exists(info.key) and not await stores.default.exists(info.key)
