"""Moving an organization's encrypted objects to another region's object store (``admin set-region --move-data``).

Each object moves as it is, ciphertext and all (its data key does not change; nothing is decrypted), in three
steps that make the move crash-safe and re-runnable:

1. copy the ciphertext to the new store and verify the copy (the store addresses it by its SHA-256, so the
   copy's key is the original's only if the bytes are; and the sizes agree); a copy already there from an
   interrupted run is verified and kept;
2. switch the data key's ``region`` in a transaction, only if it still names the old store: from then on
   every read goes to the copy;
3. delete the old copy.

A crash before step 2 leaves a copy no row names yet (the next run finds and keeps it); a crash between 2 and
3 leaves an old copy that the next run deletes (it looks for leftovers of the objects already moved in the
organization's previous store). Objects whose data keys were shredded stay where they are (they can never
be read again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitnet_actor.errors import ObjectNotFoundError, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.stores.objects import ObjectStore, RegionStores
    from bitnet_actor.stores.postgres import Connection

__all__ = ["MoveReport", "ObjectMoved", "count_misplaced", "move_org_objects"]


@dataclass(frozen=True, slots=True)
class ObjectMoved:
    """One object moved (for progress lines).

    Attributes:
        key: The object's store key.
        size: Its ciphertext's size in bytes.
        source / target: The regions whose stores it moved between (None: the default store).
        copied: False when the copy was already in the target store (an interrupted run's) or the two regions
            share one store.
        index / total: Its position in this pass, from 1.
    """

    key: str
    size: int
    source: str | None
    target: str | None
    copied: bool
    index: int
    total: int


@dataclass(frozen=True, slots=True)
class MoveReport:
    """What :func:`move_org_objects` did.

    Attributes:
        moved: Objects whose data keys now name the target store.
        bytes: Their ciphertext bytes.
        cleaned: Old copies of objects moved by an interrupted run, deleted now.
    """

    moved: int = 0
    bytes: int = 0
    cleaned: int = 0

    def __add__(self, other: MoveReport) -> MoveReport:
        """The two reports together."""
        return MoveReport(self.moved + other.moved, self.bytes + other.bytes, self.cleaned + other.cleaned)


_LIVE = "org_id = $1 AND wrapped_key IS NOT NULL"


async def count_misplaced(tx: Connection, stores: RegionStores, org_id: UUID, region: str) -> int:
    """How many of ``org_id``'s live objects are not in the store of ``region`` (where its new ones go), in
    the caller's transaction (acting for ``org_id``)."""
    count: int = await tx.fetchval(
        f"SELECT count(*) FROM model_data_keys WHERE {_LIVE} AND region IS DISTINCT FROM $2",
        org_id,
        stores.placement(region),
    )
    return count


async def move_org_objects(
    objects: EncryptedObjects,
    org_id: UUID,
    region: str,
    *,
    previous: str | None = None,
    on_object: Callable[[ObjectMoved], None] | None = None,
) -> MoveReport:
    """Move every live object of ``org_id``'s that is not in ``region``'s store there (see the module
    docstring); then delete what an interrupted run left in the store of ``previous`` (the organization's
    home region before the move), if that is another store. Re-running it is a no-op.

    Args:
        objects: The encrypted objects (their stores and the service role's database).
        org_id: The organization.
        region: The region whose store the objects go to (the default store, if it has none of its own).
        previous: The organization's home region before the move.
        on_object: Called after each object moved.

    Raises:
        StoreError: a copy does not verify (nothing switched; the bad copy is deleted).
        ObjectNotFoundError: an object is in neither store.
        StoreUnavailableError: a store cannot be reached, or is not configured here.
    """
    stores = objects.stores
    target = stores.placement(region)
    async with objects.db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            f"SELECT object_key, region FROM model_data_keys WHERE {_LIVE} AND region IS DISTINCT FROM $2"
            " ORDER BY created_at, id",
            org_id,
            target,
        )
    report = MoveReport()
    for index, row in enumerate(rows, 1):
        key, source = row["object_key"], row["region"]
        size, copied, drop_old = await _copy(objects, key, source, target)
        if not await _switch(objects, org_id, key, source, target):
            continue  # deleted or moved meanwhile: the copy was cleaned up
        if drop_old:
            await stores.stored_in(source).delete(key)
        report += MoveReport(moved=1, bytes=size)
        if on_object is not None:
            on_object(ObjectMoved(key, size, source, target, copied, index, len(rows)))
    old = stores.placement(previous)
    if previous is not None and not stores.same_store(old, target):
        report += MoveReport(cleaned=await _clean_leftovers(objects, org_id, target, stores.for_region(old)))
    return report


async def _copy(objects: EncryptedObjects, key: str, source: str | None, target: str | None) -> tuple[int, bool, bool]:
    """Copy one object's ciphertext from ``source``'s store to ``target``'s and verify it; return (its
    size, whether it was copied now, whether the old copy must go once the data key is switched)."""
    stores = objects.stores
    src, dst = stores.stored_in(source), stores.stored_in(target)
    if stores.same_store(source, target):
        return (await src.stat(key)).size, False, False
    try:
        size = (await src.stat(key)).size
    except ObjectNotFoundError:
        if await dst.exists(key):  # the old copy went already (another run's): nothing to copy
            return (await dst.stat(key)).size, False, False
        raise
    if await dst.exists(key) and (await dst.stat(key)).size == size:
        return size, False, True  # copied by an interrupted run (a store's put is atomic: it is whole)
    async with src.open_stream(key) as stream:
        info = await dst.put(stream)
    if info.key != key or info.size != size or (await dst.stat(key)).size != size:
        if info.key != key:
            await dst.delete(info.key)
        raise StoreError(
            f"the copy of {key} in region {target or 'default'}'s store does not verify "
            f"({info.key}, {info.size} bytes; expected {size} bytes): nothing was switched, run it again"
        )
    return size, True, True


async def _switch(objects: EncryptedObjects, org_id: UUID, key: str, source: str | None, target: str | None) -> bool:
    """Point the object's data key at ``target``'s store if it still names ``source``'s; whether it did."""
    async with objects.db.transaction(org_id=org_id) as tx:
        status = await tx.execute(
            "UPDATE model_data_keys SET region = $3 WHERE object_key = $1 AND region IS NOT DISTINCT FROM $2",
            key,
            source,
            target,
        )
        if status == "UPDATE 1":
            return True
        now = await tx.fetchrow("SELECT region FROM model_data_keys WHERE object_key = $1", key)
    if now is None and not objects.stores.same_store(source, target):
        await objects.stores.stored_in(target).delete(key)  # the object was deleted meanwhile
    return False


async def _clean_leftovers(objects: EncryptedObjects, org_id: UUID, target: str | None, old: ObjectStore) -> int:
    """Delete from the old store the copies of objects already in ``target``'s (an interrupted run's)."""
    async with objects.db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            f"SELECT object_key FROM model_data_keys WHERE {_LIVE} AND region IS NOT DISTINCT FROM $2", org_id, target
        )
    cleaned = 0
    for row in rows:
        if await old.exists(row["object_key"]):
            await old.delete(row["object_key"])
            cleaned += 1
    return cleaned
