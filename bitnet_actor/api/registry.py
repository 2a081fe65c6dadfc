"""The model registry under ``/api/v1/orgs/<org>/models``: versions, aliases, lineage.

Reading needs ``models:read`` (roles owner/admin/member/viewer, or the key scope), changing ``models:write``.
Everything goes through :mod:`bitnet_actor.services.models.registry`; a model of another organization is a
404 like one that does not exist. Platform models are listed beside the organization's own and read-only.
``<org>`` is an organization's id or ``current``.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from bitnet_actor.api.auth import OrgRef, handles, org_access
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.regions import model_write_access
from bitnet_actor.api.validate import Field, parse_body
from bitnet_actor.services.models import registry

__all__ = ["blueprint"]

blueprint = Blueprint("api_v1_registry", __name__, url_prefix="/api/v1")

_BASE = "/orgs/<org:org_id>/models"
_VERSION = _BASE + "/<name>/versions/<version>"


def _db() -> Any:
    return handles().stores.db


@blueprint.get(_BASE)
async def list_models(org_id: OrgRef) -> Response:
    """The organization's models and the platform's, each with its versions and aliases."""
    access = await org_access(org_id, "models:read")
    return jsonify({"object": "list", "data": await registry.list_models(_db(), access.org_id)})


@blueprint.get(_BASE + "/<name>")
async def get_model(org_id: OrgRef, name: str) -> Response:
    """One model's versions (newest first) and aliases."""
    access = await org_access(org_id, "models:read")
    registry.check_name(name)
    found = [m for m in await registry.list_models(_db(), access.org_id) if m["name"] == name]
    if not found:
        raise ApiError(404, f"no model {name}")
    own = [m for m in found if not m["platform"]]
    return jsonify((own or found)[0])


@blueprint.get(_VERSION)
async def get_version(org_id: OrgRef, name: str, version: str) -> Response:
    """One version: its state, facts, evals, aliases and origin."""
    access = await org_access(org_id, "models:read")
    return jsonify((await registry.get_version(_db(), access.org_id, name, version)).to_json())


@blueprint.patch(_VERSION)
async def update_version(org_id: OrgRef, name: str, version: str) -> Response:
    """Attach eval figures or a description (the file and its facts never change)."""
    access = await model_write_access(org_id)
    body = await parse_body(
        {"evals": Field(dict, required=False, max_len=200), "description": Field(str, required=False, max_len=2000)}
    )
    updated = await registry.update_metadata(
        _db(), access.org_id, name, version, evals=body.get("evals"), description=body.get("description")
    )
    return jsonify(updated.to_json())


@blueprint.post(_VERSION + "/deprecate")
async def deprecate_version(org_id: OrgRef, name: str, version: str) -> Response:
    """Mark a published version deprecated (it keeps serving)."""
    access = await model_write_access(org_id)
    return jsonify((await registry.deprecate(_db(), access.org_id, name, version)).to_json())


@blueprint.delete(_VERSION)
async def delete_version(org_id: OrgRef, name: str, version: str) -> Response:
    """Delete a version (409 while a route sends it traffic); its file goes when no version uses it."""
    access = await model_write_access(org_id)
    h = handles()
    object_key = await registry.delete_version(h.stores.db, access.org_id, name, version)
    if object_key is not None:
        await h.model_objects.delete(access.org_id, object_key)
    return jsonify({"object": "model.version.deleted", "id": f"{name}:{version}", "deleted": True})


@blueprint.get(_VERSION + "/lineage")
async def version_lineage(org_id: OrgRef, name: str, version: str) -> Response:
    """The chain from this version to its root: how each was made (uploaded, converted, quantized)."""
    access = await org_access(org_id, "models:read")
    chain = await registry.lineage(_db(), access.org_id, name, version)
    return jsonify({"object": "list", "data": [v.to_json() for v in chain]})


@blueprint.put(_BASE + "/<name>/aliases/<alias>")
async def set_alias(org_id: OrgRef, name: str, alias: str) -> Response:
    """Point ``name@alias`` at a published version (``latest`` moves by itself)."""
    access = await model_write_access(org_id)
    body = await parse_body({"version": Field(str, max_len=64)})
    moved = await registry.set_alias(_db(), access.org_id, name, alias, body["version"])
    return jsonify({"object": "model.alias", "name": name, "alias": alias, "version": moved.version})


@blueprint.delete(_BASE + "/<name>/aliases/<alias>")
async def delete_alias(org_id: OrgRef, name: str, alias: str) -> Response:
    """Remove an alias."""
    access = await model_write_access(org_id)
    await registry.delete_alias(_db(), access.org_id, name, alias)
    return jsonify({"object": "model.alias.deleted", "name": name, "alias": alias, "deleted": True})
