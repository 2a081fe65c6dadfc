"""Organizations' home regions: which replicas serve them (see :mod:`bitnet_actor.api.regions`).

A region is set when an organization is created (the creating replica's ``BITNET_REGION``) and moved only by
an operator (:func:`set_region`, behind ``bitnet-actor admin set-region``). Moving an organization that has
stored models would leave their bytes in the old region's object store, so it is refused unless the operator
asks to move the data, which is not implemented yet (a clear error says so).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bitnet_actor.services import audit
from bitnet_actor.services.errors import ConflictStateError, ValidationError

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database

__all__ = ["REGION_RE", "check_region", "set_region"]

REGION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_region(region: object) -> str:
    """A region name (1-64 of a-z, 0-9, '-', '_').

    Raises:
        ValidationError: anything else.
    """
    if not isinstance(region, str) or not REGION_RE.match(region):
        raise ValidationError("a region is 1-64 of a-z, 0-9, '-' or '_'", field="region")
    return region


async def set_region(db: Database, org_id: UUID, region: str, *, move_data: bool = False) -> tuple[str, str]:
    """Move ``org_id``'s home to ``region``; returns (before, after). Replicas see it within their tenant
    cache's TTL (a minute).

    Raises:
        ValidationError: a bad region name.
        ConflictStateError: the organization has stored models and ``move_data`` is false; or it is true
            (moving model data between regions is not implemented yet).
    """
    check_region(region)
    async with db.transaction(org_id=org_id) as tx:
        before = await tx.fetchval("SELECT region FROM organizations WHERE id = $1 FOR UPDATE", org_id)
        if before == region:
            return before, region
        stored = await tx.fetchval("SELECT count(*) FROM model_blobs WHERE org_id = $1", org_id)
        if stored and not move_data:
            raise ConflictStateError(
                f"the organization has {stored} stored model file(s) in region {before!r}; "
                "pass --move-data to move them too"
            )
        if stored:
            raise ConflictStateError(
                "moving model data between regions is not implemented yet; delete the models or copy the "
                "objects to the new region's store first"
            )
        await tx.execute("UPDATE organizations SET region = $2 WHERE id = $1", org_id, region)
        await audit.record(
            tx,
            org_id=org_id,
            actor=audit.Actor(user_agent="bitnet-actor admin"),
            action="org.region_changed",
            target_type="org",
            target_id=org_id,
            details={"from": before, "to": region},
        )
    return before, region
