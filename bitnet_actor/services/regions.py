"""Organizations' home regions: which replicas serve them (see :mod:`bitnet_actor.api.regions`), and whose
object store keeps their models (:class:`~bitnet_actor.stores.objects.RegionStores`).

A region is set when an organization is created (the creating replica's ``BITNET_REGION``) and moved only by
an operator (:func:`set_region`, behind ``bitnet-actor admin set-region``). Moving an organization that has
stored models is refused unless the operator asks to move its data too (``--move-data``): then its objects
are moved to the new region's store first (:mod:`bitnet_actor.services.models.relocation`), and the region
switches last, once none is left behind. Refused while it has uploads in progress.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitnet_actor.services import audit
from bitnet_actor.services.errors import ConflictStateError, ValidationError
from bitnet_actor.services.models.relocation import MoveReport, count_misplaced, move_org_objects

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.services.models.relocation import ObjectMoved
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = ["REGION_RE", "RegionChange", "check_region", "set_region"]

_MOVE_PASSES = 3  # objects written while the move runs are moved by the next pass

REGION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_region(region: object) -> str:
    """A region name (1-64 of a-z, 0-9, '-', '_').

    Raises:
        ValidationError: anything else.
    """
    if not isinstance(region, str) or not REGION_RE.match(region):
        raise ValidationError("a region is 1-64 of a-z, 0-9, '-' or '_'", field="region")
    return region


@dataclass(frozen=True, slots=True)
class RegionChange:
    """What :func:`set_region` did.

    Attributes:
        before / after: The home region before and after.
        moved: What moving the objects did; None when they were not asked to move.
    """

    before: str
    after: str
    moved: MoveReport | None = None


async def set_region(
    db: Database,
    org_id: UUID,
    region: str,
    *,
    objects: EncryptedObjects | None = None,
    on_object: Callable[[ObjectMoved], None] | None = None,
) -> RegionChange:
    """Move ``org_id``'s home to ``region``; with ``objects``, move its stored objects to that region's store
    first (and, when it is at home there already, whatever is still elsewhere). Replicas see the new region
    within their tenant cache's TTL (a minute). Safe to re-run after a failure or a crash.

    Args:
        db: The service role's database.
        org_id: The organization.
        region: The new home region.
        objects: The encrypted objects, to move the organization's data too (``--move-data``).
        on_object: Called after each object moved.

    Raises:
        ValidationError: a bad region name.
        ConflictStateError: the organization has stored models and ``objects`` is None; or it has uploads in
            progress; or objects kept arriving in the old store while they were moved.
        StoreError: a copy failed or did not verify (the region did not change; run it again).
    """
    check_region(region)
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        before: str = await tx.fetchval("SELECT region FROM organizations WHERE id = $1", org_id)
        stored = await tx.fetchval("SELECT count(*) FROM model_blobs WHERE org_id = $1", org_id)
        uploading = await tx.fetchval(
            "SELECT count(*) FROM model_uploads WHERE org_id = $1 AND state IN ('open', 'completing')"
            " AND expires_at > now()",
            org_id,
        )
    if objects is None:
        if before == region:
            return RegionChange(before, region)
        if stored:
            raise ConflictStateError(
                f"the organization has {stored} stored model file(s) in region {before!r}; "
                "pass --move-data to move them too"
            )
        async with db.transaction(org_id=org_id) as tx:
            await _switch(tx, org_id, region)
        return RegionChange(before, region)
    if uploading:
        raise ConflictStateError(
            f"the organization has {uploading} upload(s) in progress; let them complete or abort them, then move it"
        )
    moved = MoveReport()
    for _ in range(_MOVE_PASSES):
        moved += await move_org_objects(objects, org_id, region, previous=before, on_object=on_object)
        async with db.transaction(org_id=org_id) as tx:
            await tx.execute("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", org_id)
            if await count_misplaced(tx, objects.stores, org_id, region):
                continue  # written meanwhile: another pass
            if before != region:
                await _switch(tx, org_id, region, moved=moved.moved)
        return RegionChange(before, region, moved)
    raise ConflictStateError(
        f"objects kept arriving in the old store while {_MOVE_PASSES} passes moved them; stop the organization's "
        "writes and run it again"
    )


async def _switch(tx: Connection, org_id: UUID, region: str, *, moved: int | None = None) -> None:
    before = await tx.fetchval("SELECT region FROM organizations WHERE id = $1 FOR UPDATE", org_id)
    if before == region:
        return
    await tx.execute("UPDATE organizations SET region = $2 WHERE id = $1", org_id, region)
    details: dict[str, object] = {"from": before, "to": region}
    if moved is not None:
        details["objects_moved"] = moved
    await audit.record(
        tx,
        org_id=org_id,
        actor=audit.Actor(user_agent="bitnet-actor admin"),
        action="org.region_changed",
        target_type="org",
        target_id=org_id,
        details=details,
    )
