"""``GET /v1/models``: the models this organization may use."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from bitnet_actor.api.auth import handles
from bitnet_actor.api.openai.admission import inference_access, peek_limits
from bitnet_actor.api.regions import check_home_region
from bitnet_actor.services.models import registry

__all__ = ["blueprint"]

blueprint = Blueprint("models", __name__)


@blueprint.get("/v1/models")
async def list_models() -> Response:
    """The models this organization may use (``loaded``: in memory now, else loaded on the first request)."""
    access = await inference_access()
    h = handles()
    if access.org_id is not None:
        await check_home_region(h, access.org_id)
    await peek_limits(access)
    loaded = h.models.loaded()
    platform = h.models.model_names()
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "bitnet-actor", "loaded": name in loaded}
        for name in platform
    ]
    if access.org_id is not None:
        data += _org_models(await registry.list_versions(h.stores.db, access.org_id), set(platform), loaded)
    return jsonify({"object": "list", "data": data})


def _org_models(versions: list[registry.ModelVersion], platform: set[str], loaded: set[str]) -> list[dict[str, Any]]:
    """The organization's published versions as ids a request may name: ``name`` (its latest),
    ``name:version`` and ``name@alias``."""
    out: list[dict[str, Any]] = []
    for v in versions:
        if v.org_id is None or v.state not in ("ready", "deprecated"):
            continue
        created = int((v.published_at or v.created_at).timestamp())
        is_loaded = f"sha256:{v.sha256}" in loaded
        ids = [v.ref, *(f"{v.name}@{a}" for a in v.aliases)]
        if registry.LATEST in v.aliases and v.name not in platform:
            ids.insert(0, v.name)
        out += [
            {
                "id": i,
                "object": "model",
                "created": created,
                "owned_by": "organization",
                "loaded": is_loaded,
                "version": v.ref,
            }
            for i in ids
        ]
    return out
