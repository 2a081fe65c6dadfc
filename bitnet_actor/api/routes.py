"""A/B routes under ``/api/v1/orgs/<org>/routes``: a public model name split over versions by weight.

Reading needs ``models:read``, changing ``models:write``. The rules live in
:mod:`bitnet_actor.services.models.routes`; every change is published so that each replica's route cache
forgets the old weights at once. A route of another organization is a 404 like one that does not exist.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from bitnet_actor.api.auth import OrgRef, handles, org_access
from bitnet_actor.api.errors import ApiError, json_body
from bitnet_actor.api.regions import model_write_access
from bitnet_actor.api.validate import MAX_JSON_BYTES
from bitnet_actor.services.models import routes

__all__ = ["blueprint"]

blueprint = Blueprint("api_v1_routes", __name__, url_prefix="/api/v1")

_BASE = "/orgs/<org:org_id>/routes"


@blueprint.get(_BASE)
async def list_routes(org_id: OrgRef) -> Response:
    """The organization's routes."""
    access = await org_access(org_id, "models:read")
    found = await routes.list_routes(handles().stores.db, access.org_id)
    return jsonify({"object": "list", "data": [r.to_json() for r in found]})


@blueprint.get(_BASE + "/<public_name>")
async def get_route(org_id: OrgRef, public_name: str) -> Response:
    """One route and its targets."""
    access = await org_access(org_id, "models:read")
    return jsonify((await routes.get_route(handles().stores.db, access.org_id, public_name)).to_json())


@blueprint.put(_BASE + "/<public_name>")
async def put_route(org_id: OrgRef, public_name: str) -> Response:
    """Create or replace a route: ``{"targets": [{"version": "name:version", "weight": 90}, ...]}``."""
    access = await model_write_access(org_id)
    body = await json_body(max_bytes=MAX_JSON_BYTES)
    if set(body) != {"targets"}:
        raise ApiError(400, "the body is {targets: [{version, weight}, ...]}", param="targets", code="invalid_value")
    h = handles()
    route = await routes.put_route(h.stores.db, access.org_id, public_name, body["targets"])
    await routes.publish_invalidation(h.stores.redis, access.org_id, public_name, h.routes)
    return jsonify(route.to_json())


@blueprint.delete(_BASE + "/<public_name>")
async def delete_route(org_id: OrgRef, public_name: str) -> Response:
    """Remove a route (requests naming it are then 404s, or the model of that name if one is published)."""
    access = await model_write_access(org_id)
    h = handles()
    await routes.delete_route(h.stores.db, access.org_id, public_name)
    await routes.publish_invalidation(h.stores.redis, access.org_id, public_name, h.routes)
    return jsonify({"object": "model.route.deleted", "id": public_name, "deleted": True})
