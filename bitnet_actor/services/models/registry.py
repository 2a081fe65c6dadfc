"""The model registry: named models with immutable versions, movable aliases and lineage, per organization.

A version is created ``pending`` (its file stored, not yet inspected), then published (``ready``: its facts
recorded, ``latest`` moved to it) or failed with the inspector's message. Once published, its file, facts
and origin never change (a trigger in migration 0005 refuses it); only its description, the eval figures a
user attaches, and deprecation do. References a request may use: ``name`` (its ``latest``),
``name:version`` and ``name@alias``. Platform versions (``org_id`` NULL) are visible to every organization
and changed only by operators. Every query runs in a transaction acting for the organization, so row-level
security keeps tenants apart even where a query forgets to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bitnet_actor.errors import ConflictError
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime
    from uuid import UUID

    from bitnet_actor.stores.postgres import Connection, Database, Record

__all__ = [
    "LATEST",
    "ModelVersion",
    "create_version",
    "delete_alias",
    "delete_version",
    "deprecate",
    "fail",
    "get_version",
    "lineage",
    "list_models",
    "list_versions",
    "parse_ref",
    "publish",
    "resolve",
    "set_alias",
    "update_metadata",
    "version_exists",
]

LATEST = "latest"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
ORIGINS = ("uploaded", "converted", "quantized")
_MAX_EVALS_BYTES = 16_384

_COLUMNS = (
    "v.id, v.org_id, v.name, v.version, v.state, v.sha256, v.facts, v.evals, v.description, v.parent_id,"
    " v.origin, v.origin_details, v.error, v.created_at, v.published_at, v.deprecated_at, v.blob_id, v.local_path,"
    " coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM model_aliases a WHERE a.version_id = v.id),"
    " '{}') AS aliases"
)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One version as the API shows it."""

    id: UUID
    org_id: UUID | None
    name: str
    version: str
    state: str
    sha256: str | None
    facts: dict[str, Any]
    evals: dict[str, Any]
    description: str
    parent_id: UUID | None
    origin: str
    origin_details: dict[str, Any]
    error: str | None
    created_at: datetime
    published_at: datetime | None
    deprecated_at: datetime | None
    aliases: tuple[str, ...] = field(default=())
    blob_id: UUID | None = None
    local_path: str | None = None

    @classmethod
    def from_row(cls, row: Record) -> ModelVersion:
        """From a row selected with ``_COLUMNS``."""

        def obj(value: Any) -> dict[str, Any]:
            return dict(json.loads(value) if isinstance(value, str) else (value or {}))

        return cls(
            id=row["id"],
            org_id=row["org_id"],
            name=row["name"],
            version=row["version"],
            state=row["state"],
            sha256=row["sha256"],
            facts=obj(row["facts"]),
            evals=obj(row["evals"]),
            description=row["description"],
            parent_id=row["parent_id"],
            origin=row["origin"],
            origin_details=obj(row["origin_details"]),
            error=row["error"],
            created_at=row["created_at"],
            published_at=row["published_at"],
            deprecated_at=row["deprecated_at"],
            aliases=tuple(row["aliases"]),
            blob_id=row["blob_id"],
            local_path=row["local_path"],
        )

    @property
    def ref(self) -> str:
        """``name:version``."""
        return f"{self.name}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        """The API's view (no storage paths)."""
        return {
            "object": "model.version",
            "id": f"{self.name}:{self.version}",
            "version_id": str(self.id),
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "platform": self.org_id is None,
            "sha256": self.sha256,
            "aliases": list(self.aliases),
            "facts": self.facts,
            "evals": self.evals,
            "description": self.description,
            "parent_version_id": str(self.parent_id) if self.parent_id else None,
            "origin": self.origin,
            "origin_details": self.origin_details,
            "error": self.error,
            "created_at": int(self.created_at.timestamp()),
            "published_at": int(self.published_at.timestamp()) if self.published_at else None,
            "deprecated_at": int(self.deprecated_at.timestamp()) if self.deprecated_at else None,
        }


def check_name(name: object) -> str:
    """A model name (1-100 of letters, digits, '.', '_', '-', starting with a letter or digit).

    Raises:
        ValidationError: anything else.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(
            "a model name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit", field="name"
        )
    return name


def check_version(version: object) -> str:
    """A version label (1-64 of letters, digits, '.', '_', '-').

    Raises:
        ValidationError: anything else.
    """
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise ValidationError(
            "a version is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", field="version"
        )
    return version


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``name``, ``name:version`` or ``name@alias`` -> (name, version, alias); a bare name means ``latest``.

    Raises:
        ValidationError: a malformed reference.
    """
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not ALIAS_RE.match(alias):
            raise ValidationError(f"bad alias in {ref!r}", field="model")
        return check_name(name), None, alias
    if ":" in ref:
        name, _, version = ref.partition(":")
        return check_name(name), check_version(version), None
    return check_name(ref), None, LATEST


async def _one(tx: Connection, where: str, *args: Any) -> ModelVersion | None:
    row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM model_versions v WHERE {where}", *args)
    return ModelVersion.from_row(row) if row else None


async def version_exists(db: Database, org_id: UUID, name: str, version: str) -> bool:
    """Whether the organization has ``name:version`` already (in any state)."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        return bool(
            await tx.fetchval(
                "SELECT 1 FROM model_versions WHERE org_id = $1 AND name = $2 AND version = $3", org_id, name, version
            )
        )


async def create_version(
    db: Database,
    org_id: UUID,
    *,
    name: str,
    version: str,
    blob_id: UUID | None = None,
    sha256: str | None = None,
    parent_id: UUID | None = None,
    origin: str = "uploaded",
    origin_details: Mapping[str, Any] | None = None,
    description: str = "",
    created_by: UUID | None = None,
    facts: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """A new version of ``name`` in ``org_id``: ``pending``, or, with ``facts`` (its file already inspected),
    published at once (``ready``, ``latest`` moved to it) in the same transaction.

    Raises:
        ValidationError: a bad name, version or origin.
        ConflictStateError: ``name:version`` exists already (versions are never reused).
        NotFoundError: the parent is not a version this organization can see.
    """
    check_name(name)
    check_version(version)
    if origin not in ORIGINS:
        raise ValidationError(f"origin must be one of {', '.join(ORIGINS)}", field="origin")
    if len(description) > 2000:
        raise ValidationError("description is longer than 2000 characters", field="description")
    async with db.transaction(org_id=org_id) as tx:
        if parent_id is not None and not await tx.fetchval("SELECT 1 FROM model_versions WHERE id = $1", parent_id):
            raise NotFoundError("no such parent version")
        try:
            row_id = await tx.fetchval(
                "INSERT INTO model_versions (org_id, name, version, blob_id, sha256, parent_id, origin,"
                " origin_details, description, created_by, state, facts, published_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,"
                " CASE WHEN $11 = 'ready' THEN now() END) RETURNING id",
                org_id,
                name,
                version,
                blob_id,
                sha256,
                parent_id,
                origin,
                dict(origin_details or {}),
                description,
                created_by,
                "pending" if facts is None else "ready",
                dict(facts or {}),
            )
        except ConflictError:
            raise ConflictStateError(f"model {name} already has a version {version!r}") from None
        if facts is not None:
            await _move_alias(tx, org_id, name, LATEST, row_id)
        found = await _one(tx, "v.id = $1", row_id)
    assert found is not None
    return found


async def publish(db: Database, org_id: UUID, version_id: UUID, *, facts: Mapping[str, Any]) -> ModelVersion:
    """Make a pending version ``ready`` with its inspected ``facts`` and move ``latest`` to it.

    Raises:
        NotFoundError: no such pending version.
    """
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "UPDATE model_versions SET state = 'ready', facts = $2, published_at = now(), error = NULL"
            " WHERE id = $1 AND state = 'pending' AND org_id = $3 RETURNING name",
            version_id,
            dict(facts),
            org_id,
        )
        if row is None:
            raise NotFoundError("no such pending version")
        await _move_alias(tx, org_id, row["name"], LATEST, version_id)
        found = await _one(tx, "v.id = $1", version_id)
    assert found is not None
    return found


async def fail(db: Database, org_id: UUID, version_id: UUID, error: str) -> None:
    """Mark a pending version failed with ``error`` (the inspector's or converter's message)."""
    async with db.transaction(org_id=org_id) as tx:
        await tx.execute(
            "UPDATE model_versions SET state = 'failed', error = $2 WHERE id = $1 AND state = 'pending'",
            version_id,
            error[:2000],
        )


async def _move_alias(tx: Connection, org_id: UUID, name: str, alias: str, version_id: UUID) -> None:
    await tx.execute(
        "INSERT INTO model_aliases (org_id, name, alias, version_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT ON CONSTRAINT model_aliases_key DO UPDATE SET version_id = excluded.version_id,"
        " updated_at = now()",
        org_id,
        name,
        alias,
        version_id,
    )


async def get_version(db: Database | Connection, org_id: UUID, name: str, version: str) -> ModelVersion:
    """``name:version`` as ``org_id`` sees it (its own first, else the platform's).

    Raises:
        NotFoundError: none visible.
    """
    from bitnet_actor.stores.postgres import Database as _Db

    if isinstance(db, _Db):
        async with db.transaction(org_id=org_id, readonly=True) as tx:
            return await get_version(tx, org_id, name, version)
    found = await _one(db, "v.name = $1 AND v.version = $2 ORDER BY v.org_id IS NULL LIMIT 1", name, version)
    if found is None:
        raise NotFoundError(f"no model version {name}:{version}")
    return found


async def resolve(db: Database, org_id: UUID, ref: str) -> ModelVersion:
    """The version a reference names now (``name``, ``name:version``, ``name@alias``); failed and pending
    versions do not resolve.

    Raises:
        ValidationError: a malformed reference. NotFoundError: nothing it names is ready.
    """
    name, version, alias = parse_ref(ref)
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        if version is not None:
            found: ModelVersion | None = await get_version(tx, org_id, name, version)
        else:
            found = await _one(
                tx,
                "v.id = (SELECT a.version_id FROM model_aliases a WHERE a.name = $1 AND a.alias = $2"
                " ORDER BY a.org_id IS NULL LIMIT 1)",
                name,
                alias,
            )
    if found is None or found.state not in ("ready", "deprecated"):
        raise NotFoundError(f"the model {ref!r} does not exist or is not ready")
    return found


async def list_versions(db: Database, org_id: UUID, name: str | None = None) -> list[ModelVersion]:
    """The versions ``org_id`` sees (its own and the platform's), newest first; of one name if given."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            f"SELECT {_COLUMNS} FROM model_versions v WHERE ($1::text IS NULL OR v.name = $1)"
            " ORDER BY v.org_id IS NULL, v.name, v.created_at DESC",
            name,
        )
    return [ModelVersion.from_row(r) for r in rows]


async def list_models(db: Database, org_id: UUID) -> list[dict[str, Any]]:
    """The organization's models grouped by name: versions and aliases."""
    by_name: dict[tuple[bool, str], list[ModelVersion]] = {}
    for v in await list_versions(db, org_id):
        by_name.setdefault((v.org_id is None, v.name), []).append(v)
    out = []
    for (platform, name), versions in by_name.items():
        aliases = {a: v.version for v in versions for a in v.aliases}
        out.append(
            {
                "object": "model",
                "name": name,
                "platform": platform,
                "aliases": aliases,
                "versions": [v.to_json() for v in versions],
            }
        )
    return out


async def _own(tx: Connection, org_id: UUID, name: str, version: str) -> ModelVersion:
    found = await _one(tx, "v.org_id = $1 AND v.name = $2 AND v.version = $3 FOR UPDATE OF v", org_id, name, version)
    if found is None:
        raise NotFoundError(f"no model version {name}:{version}")
    return found


async def set_alias(db: Database, org_id: UUID, name: str, alias: str, version: str) -> ModelVersion:
    """Point ``name@alias`` at ``version`` (a ready one). ``latest`` moves by itself on publish.

    Raises:
        ValidationError: a bad alias, or ``latest``. NotFoundError / ConflictStateError: no such ready version.
    """
    if not ALIAS_RE.match(alias):
        raise ValidationError("an alias is 1-64 lowercase letters, digits, '.', '_' or '-'", field="alias")
    if alias == LATEST:
        raise ValidationError("'latest' moves to each new published version by itself", field="alias")
    async with db.transaction(org_id=org_id) as tx:
        target = await _own(tx, org_id, name, version)
        if target.state not in ("ready", "deprecated"):
            raise ConflictStateError(f"{name}:{version} is {target.state}, not published")
        await _move_alias(tx, org_id, name, alias, target.id)
        found = await _one(tx, "v.id = $1", target.id)
    assert found is not None
    return found


async def delete_alias(db: Database, org_id: UUID, name: str, alias: str) -> None:
    """Remove ``name@alias``.

    Raises:
        ValidationError: ``latest``. NotFoundError: no such alias.
    """
    if alias == LATEST:
        raise ValidationError("'latest' cannot be removed; it follows the newest version", field="alias")
    async with db.transaction(org_id=org_id) as tx:
        status = await tx.execute(
            "DELETE FROM model_aliases WHERE org_id = $1 AND name = $2 AND alias = $3", org_id, name, alias
        )
    if status.split()[-1] == "0":
        raise NotFoundError(f"no alias {name}@{alias}")


async def update_metadata(
    db: Database, org_id: UUID, name: str, version: str, *, evals: Mapping[str, Any] | None, description: str | None
) -> ModelVersion:
    """Attach eval figures (a JSON object of at most 16 KB) or a description; the rest is immutable.

    Raises:
        ValidationError: evals too large or not numbers/strings at the leaves.
    """
    if evals is not None and len(json.dumps(evals)) > _MAX_EVALS_BYTES:
        raise ValidationError(f"evals must be at most {_MAX_EVALS_BYTES} bytes of JSON", field="evals")
    if description is not None and len(description) > 2000:
        raise ValidationError("description is longer than 2000 characters", field="description")
    async with db.transaction(org_id=org_id) as tx:
        target = await _own(tx, org_id, name, version)
        await tx.execute(
            "UPDATE model_versions SET evals = coalesce($2, evals), description = coalesce($3, description)"
            " WHERE id = $1",
            target.id,
            dict(evals) if evals is not None else None,
            description,
        )
        found = await _one(tx, "v.id = $1", target.id)
    assert found is not None
    return found


async def deprecate(db: Database, org_id: UUID, name: str, version: str) -> ModelVersion:
    """Mark a published version deprecated (it keeps serving; listings say so).

    Raises:
        ConflictStateError: not published.
    """
    async with db.transaction(org_id=org_id) as tx:
        target = await _own(tx, org_id, name, version)
        if target.state != "ready":
            raise ConflictStateError(f"{name}:{version} is {target.state}: only a ready version can be deprecated")
        await tx.execute(
            "UPDATE model_versions SET state = 'deprecated', deprecated_at = now() WHERE id = $1", target.id
        )
        found = await _one(tx, "v.id = $1", target.id)
    assert found is not None
    return found


async def delete_version(db: Database, org_id: UUID, name: str, version: str) -> str | None:
    """Delete a version; ``latest`` goes back to the newest remaining published one (ready first, else a
    deprecated one). Returns the object key of its blob when nothing else uses it (the caller deletes the
    object), else None.

    Raises:
        ConflictStateError: a route sends traffic to it, or a version was derived from it by a running job.
    """
    async with db.transaction(org_id=org_id) as tx:
        target = await _own(tx, org_id, name, version)
        routed = await tx.fetch(
            "SELECT public_name FROM model_routes r, jsonb_array_elements(r.targets) t"
            " WHERE t->>'version_id' = $1 AND (t->>'weight')::numeric > 0",
            str(target.id),
        )
        if routed:
            names = ", ".join(sorted({r["public_name"] for r in routed}))
            raise ConflictStateError(f"{name}:{version} receives traffic from route(s) {names}: change them first")
        running = await tx.fetchval(
            "SELECT 1 FROM model_jobs WHERE source_version_id = $1 AND state IN ('queued', 'running')", target.id
        )
        if running:
            raise ConflictStateError(f"{name}:{version} is the source of a job that has not finished")
        was_latest = LATEST in target.aliases
        await tx.execute("DELETE FROM model_versions WHERE id = $1", target.id)
        if was_latest:
            newest = await tx.fetchval(
                "SELECT id FROM model_versions WHERE org_id = $1 AND name = $2 AND state IN ('ready', 'deprecated')"
                " ORDER BY state = 'ready' DESC, published_at DESC LIMIT 1",
                org_id,
                name,
            )
            if newest is not None:
                await _move_alias(tx, org_id, name, LATEST, newest)
        if target.blob_id is None:
            return None
        still_used = await tx.fetchval("SELECT 1 FROM model_versions WHERE blob_id = $1", target.blob_id)
        if still_used:
            return None
        key: str | None = await tx.fetchval(
            "DELETE FROM model_blobs WHERE id = $1 RETURNING object_key", target.blob_id
        )
        if key is None or await tx.fetchval("SELECT bitnet_object_in_use($1)", key):
            return None  # another organization's blob holds the same object
        return key


async def lineage(db: Database, org_id: UUID, name: str, version: str) -> list[ModelVersion]:
    """The chain from ``name:version`` to its root (itself first), following ``parent_id``.

    Raises:
        NotFoundError: no such version.
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        start = await get_version(tx, org_id, name, version)
        rows = await tx.fetch(
            "WITH RECURSIVE chain(id, depth) AS (SELECT $1::uuid, 0 UNION ALL"
            " SELECT p.parent_id, c.depth + 1 FROM chain c JOIN model_versions p ON p.id = c.id"
            " WHERE p.parent_id IS NOT NULL AND c.depth < 100)"
            f" SELECT {_COLUMNS} FROM chain c JOIN model_versions v ON v.id = c.id ORDER BY c.depth",
            start.id,
        )
    return [ModelVersion.from_row(r) for r in rows]
