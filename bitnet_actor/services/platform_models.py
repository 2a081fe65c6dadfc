"""Platform-wide models: the ones every organization may use (``serve --model``, the bundled demo model).

Their ``models`` rows have no organization (``org_id`` NULL), so only the tables' owner may write them (the
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
            "INSERT INTO models (org_id, name, version, file_path) VALUES (NULL, $1, '1', $2)"
            " ON CONFLICT ON CONSTRAINT models_org_name_version_key DO UPDATE SET file_path = EXCLUDED.file_path",
            name,
            path,
        )
