"""``GET /v1/models``: the models this organization may use."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from bitnet_actor.api.auth import handles
from bitnet_actor.api.openai.admission import inference_access, peek_limits

__all__ = ["blueprint"]

blueprint = Blueprint("models", __name__)


@blueprint.get("/v1/models")
async def list_models() -> Response:
    """The models this organization may use (``loaded``: in memory now, else loaded on the first request)."""
    await peek_limits(await inference_access())
    models = handles().models
    loaded = models.loaded()
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "bitnet-actor", "loaded": name in loaded}
        for name in models.model_names()
    ]
    return jsonify({"object": "list", "data": data})
