""":class:`RegionStores`: an object store per region (``BITNET_REGION_STORES``), the default store for the rest.

An organization's objects are placed in its home region's store when that region has one of its own, else in
the default store (``BITNET_S3_BUCKET`` or the data dir's). Where an object was placed is recorded beside it
(the ``region`` of its data key: a region name, or None for the default store), and reads go there, so a
region may get a store of its own at any time: the objects placed before stay readable in the default store
until an operator moves them (``bitnet-actor admin set-region --move-data``).

Every replica sharing a database must configure the same stores, as it does the same master keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

import trio

from bitnet_actor.errors import StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from bitnet_actor.stores.objects._base import ObjectStore

__all__ = ["RegionStores"]

_CLOSE_S = 10.0


class RegionStores:
    """The object stores of every region: created on first use, one instance per URL, closed together.

    Args:
        default: The store of every region without its own (and of platform objects).
        regions: Region name -> its store's URL (as :func:`~bitnet_actor.config.parse_region_stores` returns).
        open_store: Creates the store of a URL (no I/O); needed when ``regions`` is not empty.
        default_location: The default store's URL, when it has one: a region listed with the same URL then
            shares the default store (and moving objects between the two copies nothing).
    """

    def __init__(
        self,
        default: ObjectStore,
        regions: Mapping[str, str] | None = None,
        *,
        open_store: Callable[[str], ObjectStore] | None = None,
        default_location: str = "",
    ) -> None:
        """See the class docstring."""
        self._default = default
        self._regions = dict(regions or {})
        if self._regions and open_store is None:
            raise ValueError("open_store is needed to open the regions' stores")
        self._open_store = open_store
        self._default_location = default_location
        self._opened: dict[str, ObjectStore] = {}
        self._closed = False

    @property
    def default(self) -> ObjectStore:
        """The default store."""
        return self._default

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions that have a store of their own."""
        return tuple(self._regions)

    def placement(self, region: str | None) -> str | None:
        """What to record as the store of an object placed for an organization at home in ``region``:
        ``region`` itself when it has a store of its own, else None (the default store)."""
        return region if region is not None and region in self._regions else None

    def for_region(self, region: str | None) -> ObjectStore:
        """The store where objects of ``region`` go: its own, or the default one (None, or a region not
        listed).

        Raises:
            trio.ClosedResourceError: the stores were closed.
        """
        placed = self.placement(region)
        return self._default if placed is None else self._store(self._regions[placed])

    def stored_in(self, region: str | None) -> ObjectStore:
        """The store an object recorded as placed in ``region`` lives in (None: the default store).

        Raises:
            StoreUnavailableError: ``region`` has no store configured here (BITNET_REGION_STORES lacks it),
                so its objects cannot be reached from this process.
        """
        if region is None:
            return self._default
        url = self._regions.get(region)
        if url is None:
            raise StoreUnavailableError(
                f"objects stored in region {region!r} are in that region's store, which BITNET_REGION_STORES "
                "does not name here"
            )
        return self._store(url)

    def same_store(self, a: str | None, b: str | None) -> bool:
        """Whether objects recorded as placed in regions ``a`` and ``b`` are in one and the same store."""
        return self._location(a) == self._location(b)

    def opened(self) -> tuple[ObjectStore, ...]:
        """The default store and every region store opened so far."""
        return (self._default, *self._opened.values())

    async def aclose(self) -> None:
        """Close every store, each within a grace period; idempotent."""
        self._closed = True
        stores, self._opened = self.opened(), {}
        for store in stores:
            with trio.move_on_after(_CLOSE_S, shield=True):
                await store.aclose()

    async def __aenter__(self) -> Self:
        """Return these stores."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close every store."""
        await self.aclose()

    def _location(self, region: str | None) -> str:
        url = None if region is None else self._regions.get(region)
        return "<default>" if url is None or url == self._default_location else url

    def _store(self, url: str) -> ObjectStore:
        if url == self._default_location:
            return self._default
        store = self._opened.get(url)
        if store is None:
            if self._closed:
                raise trio.ClosedResourceError("the region stores are closed")
            assert self._open_store is not None
            store = self._opened[url] = self._open_store(url)
        return store
