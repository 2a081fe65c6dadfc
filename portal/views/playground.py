"""The playground: try a model from the browser, streamed over the ``/v1/responses`` websocket with the
user's own session.

The page is a form (model, system prompt, message, temperature, max tokens) and an output area; the static
script ``playground.js`` opens the socket (same origin, the session's CSRF token and the organization in
the query: :mod:`bitnet_actor.api.openai.responses_ws`), sends ``response.create`` and shows the deltas as
they come, with the token counts and the latency, and keeps a curl and a Python snippet of the same request
up to date. The socket goes through the API's one admission path, so a playground response is rate-limited,
counted against the quota and metered as the user's exactly like an API call. Without JavaScript the page
says so and shows the snippets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import request

from bitnet_actor.api.auth import handles
from bitnet_actor.services.models import registry
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, render

if TYPE_CHECKING:
    from quart import Response

__all__ = ["model_choices"]


async def model_choices(page: OrgPage) -> list[tuple[str, str]]:
    """``(value for the API's model field, label)`` of every model the organization can call."""
    h = handles()
    out = [(name, f"{name} (platform)") for name in sorted(h.models.model_names())]
    if page.can("models:read"):
        for model in await registry.list_models(h.stores.db, page.org.id):
            if not model["platform"]:
                out.append((model["name"], f"{model['name']} (latest)"))
                out.extend((f"{model['name']}@{a}", f"{model['name']}@{a}") for a in sorted(model["aliases"]))
    return out


@blueprint.get("/orgs/<uuid:org_id>/playground")
@org_page("inference")
async def playground(page: OrgPage) -> Response:
    """The playground page."""
    models = await model_choices(page)
    base = request.host_url.rstrip("/")
    return await render("portal/org/playground.html", page=page, models=models, base_url=base)
