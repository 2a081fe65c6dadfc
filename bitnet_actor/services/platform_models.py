"""Platform-wide models: the ones every organization may use (``serve --model``, the bundled demo model).

Their ``model_versions`` rows have no organization (``org_id`` NULL), so only the tables' owner may write them (the
service role writes its own organization's rows only, under row-level security): ``register`` runs on the
owner's connection at start, right after the migrations. The model registry of [H] takes this over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database

__all__ = ["register"]


async def register(owner: Database, models: dict[str, str]) -> None:
    """Insert or update a platform-wide row (version ``1``) for each ``name -> path`` of ``models``.

    Args:
        owner: a connection as the tables' owner.
        models: model name -> local path.
    """
    for name, path in models.items():
        await owner.execute(
            "INSERT INTO model_versions (org_id, name, version, state, local_path, origin, published_at)"
            " VALUES (NULL, $1, '1', 'ready', $2, 'platform', now())"
            " ON CONFLICT ON CONSTRAINT model_versions_org_name_version_key"
            " DO UPDATE SET local_path = EXCLUDED.local_path",
            name,
            path,
        )
