"""A/B routes: a public model name split over an organization's published versions by weight.

A route ``public_name`` -> ``[{version_id, weight}, ...]`` (at most :data:`MAX_TARGETS` targets, integer
weights >= 0 summing to 100, each a ready or deprecated version of the organization). A request naming the
route is sent to one target by a stable hash of (organization, route, sticky id) mod 100 against the
cumulative weights, so one user (the body's ``user``, else the API key) always lands on the same version
while the weights stand. A public name may not be one of the organization's model names (a request naming it
must mean one thing): :func:`put_route` refuses it with a conflict, and publishing a model under a routed name
leaves the route in front (routes are resolved first).

Every change publishes ``org_id:public_name`` on :data:`INVALIDATION_CHANNEL`; each replica's
:class:`actors.route_cache.RouteCache` forgets that entry (its TTL bounds a missed message).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ValidationError
from bitnet_actor.services.models import registry

if TYPE_CHECKING:
    from datetime import datetime
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = [
    "INVALIDATION_CHANNEL",
    "MAX_TARGETS",
    "Route",
    "Target",
    "delete_route",
    "get_route",
    "list_routes",
    "load_route",
    "pick",
    "publish_invalidation",
    "put_route",
]

INVALIDATION_CHANNEL = "bitnet:model-routes:invalidate"
MAX_TARGETS = 8


@dataclass(frozen=True, slots=True)
class Target:
    """One version a route sends a share of its traffic to (``ref`` None: the version is gone)."""

    version_id: UUID
    ref: str | None
    weight: int


@dataclass(frozen=True, slots=True)
class Route:
    """A public name and its targets."""

    org_id: UUID
    public_name: str
    targets: tuple[Target, ...]
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The API's view."""
        return {
            "object": "model.route",
            "id": self.public_name,
            "public_name": self.public_name,
            "targets": [{"version": t.ref, "version_id": str(t.version_id), "weight": t.weight} for t in self.targets],
            "updated_at": int(self.updated_at.timestamp()),
        }


def pick(route: Route, sticky: str) -> Target:
    """The target of ``sticky`` (a user or key id): sha256(org, route, sticky) mod 100 against the cumulative
    weights, skipping targets whose version is gone.

    Raises:
        NotFoundError: no live target has weight.
    """
    digest = hashlib.sha256(f"{route.org_id}\x00{route.public_name}\x00{sticky}".encode()).digest()
    slot = int.from_bytes(digest[:8], "big") % 100
    live = [t for t in route.targets if t.ref is not None and t.weight > 0]
    total = sum(t.weight for t in live)
    if not live:
        raise NotFoundError(f"the route {route.public_name!r} sends traffic nowhere")
    slot = slot * total // 100  # == slot while the weights sum to 100
    upto = 0
    for t in live:
        upto += t.weight
        if slot < upto:
            return t
    return live[-1]


def _targets(value: object) -> list[tuple[str, int]]:
    if not isinstance(value, list) or not value:
        raise ValidationError("targets must be a non-empty list of {version, weight}", field="targets")
    if len(value) > MAX_TARGETS:
        raise ValidationError(f"a route has at most {MAX_TARGETS} targets", field="targets")
    out: list[tuple[str, int]] = []
    for item in value:
        if not isinstance(item, dict) or set(item) - {"version", "weight"}:
            raise ValidationError("each target is {version: 'name:version', weight: integer}", field="targets")
        ref, weight = item.get("version"), item.get("weight")
        if not isinstance(ref, str) or ":" not in ref:
            raise ValidationError("a target's version is 'name:version'", field="targets")
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ValidationError("a target's weight is a non-negative integer", field="targets")
        out.append((ref, weight))
    if sum(w for _, w in out) != 100:
        raise ValidationError("the targets' weights must sum to 100", field="targets")
    if len({r for r, _ in out}) != len(out):
        raise ValidationError("a version appears twice in targets", field="targets")
    return out


_SELECT = (
    "SELECT r.org_id, r.public_name, r.updated_at,"
    " coalesce((SELECT jsonb_agg(jsonb_build_object('version_id', t->>'version_id', 'weight', (t->>'weight')::int,"
    " 'ref', (SELECT v.name || ':' || v.version FROM model_versions v WHERE v.id = (t->>'version_id')::uuid))"
    " ORDER BY n) FROM jsonb_array_elements(r.targets) WITH ORDINALITY AS x(t, n)), '[]'::jsonb) AS resolved"
    " FROM model_routes r"
)


def _route(row: Any) -> Route:
    import uuid

    targets = tuple(Target(uuid.UUID(t["version_id"]), t["ref"], int(t["weight"])) for t in row["resolved"])
    return Route(row["org_id"], row["public_name"], targets, row["updated_at"])


async def publish_invalidation(redis: RedisStore, org_id: UUID, public_name: str, cache: Any = None) -> None:
    """Tell every replica's route cache (and ``cache``, this one's, at once) that a route changed."""
    if cache is not None:
        cache.invalidate(org_id, public_name)
    await redis.publish(INVALIDATION_CHANNEL, f"{org_id}:{public_name}")


async def put_route(db: Database, org_id: UUID, public_name: str, targets: object) -> Route:
    """Create or replace a route.

    Raises:
        ValidationError: a bad name or targets (weights, count, an unknown or unpublished version).
        ConflictStateError: ``public_name`` is one of the organization's model names.
    """
    registry.check_name(public_name)
    wanted = _targets(targets)
    async with db.transaction(org_id=org_id) as tx:
        if await tx.fetchval("SELECT 1 FROM model_versions WHERE org_id = $1 AND name = $2", org_id, public_name):
            raise ConflictStateError(f"{public_name!r} is a model name of this organization; pick another route name")
        stored = []
        for ref, weight in wanted:
            name, _, version = ref.partition(":")
            row = await tx.fetchrow(
                "SELECT id, state FROM model_versions WHERE org_id = $1 AND name = $2 AND version = $3 FOR SHARE",
                org_id,
                name,
                version,
            )
            if row is None or row["state"] not in ("ready", "deprecated"):
                raise ValidationError(f"{ref} is not a published version of this organization", field="targets")
            stored.append({"version_id": str(row["id"]), "weight": weight})
        await tx.execute(
            "INSERT INTO model_routes (org_id, public_name, targets) VALUES ($1, $2, $3)"
            " ON CONFLICT (org_id, public_name) DO UPDATE SET targets = excluded.targets, updated_at = now()",
            org_id,
            public_name,
            stored,
        )
        row = await tx.fetchrow(_SELECT + " WHERE r.org_id = $1 AND r.public_name = $2", org_id, public_name)
    return _route(row)


async def load_route(db: Database, org_id: UUID, public_name: str) -> Route | None:
    """The route ``public_name`` of ``org_id``, or None."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(_SELECT + " WHERE r.org_id = $1 AND r.public_name = $2", org_id, public_name)
    return _route(row) if row else None


async def get_route(db: Database, org_id: UUID, public_name: str) -> Route:
    """The route ``public_name``.

    Raises:
        NotFoundError: none.
    """
    found = await load_route(db, org_id, public_name)
    if found is None:
        raise NotFoundError(f"no route {public_name}")
    return found


async def list_routes(db: Database, org_id: UUID) -> list[Route]:
    """The organization's routes by name."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(_SELECT + " WHERE r.org_id = $1 ORDER BY r.public_name", org_id)
    return [_route(r) for r in rows]


async def delete_route(db: Database, org_id: UUID, public_name: str) -> None:
    """Remove a route.

    Raises:
        NotFoundError: none.
    """
    async with db.transaction(org_id=org_id) as tx:
        status = await tx.execute(
            "DELETE FROM model_routes WHERE org_id = $1 AND public_name = $2", org_id, public_name
        )
    if status.split()[-1] == "0":
        raise NotFoundError(f"no route {public_name}")
