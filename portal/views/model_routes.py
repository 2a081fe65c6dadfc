"""A/B routes: a public model name split over the organization's published versions by weight; the list,
creating and editing a route's targets and weights, deleting one (after a confirmation page).

Everything goes through :mod:`bitnet_actor.services.models.routes`, as the JSON API's route routes do, with
the same rules (``models:read`` sees, ``models:write`` changes, from the organization's home region) and the
same invalidation of every replica's route cache after a change. The form has a row (a version and its
weight) per target, up to :data:`~bitnet_actor.services.models.routes.MAX_TARGETS`; empty rows are ignored
and the service checks the rest (weights summing to 100, published versions, a name that is no model's). A
route name of another organization is a 404.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bitnet_actor.api.auth import handles
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ValidationError
from bitnet_actor.services.models import registry, routes
from portal.errors import PortalError
from portal.forms import FormState, read_form, text
from portal.tenancy import OrgPage, org_page
from portal.views.models import home_region, published_refs
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from collections.abc import Mapping

    from quart import Response

__all__ = ["form_rows", "form_targets"]

_SPARE_ROWS = 2


def form_targets(form: Mapping[str, str]) -> list[dict[str, Any]]:
    """The targets a route form names (``version-N`` and ``weight-N``; rows without a version skipped), as
    :func:`~bitnet_actor.services.models.routes.put_route` takes them.

    Raises:
        ValidationError: a weight that is not a whole number, or one without a version.
    """
    out: list[dict[str, Any]] = []
    for i in range(routes.MAX_TARGETS):
        ref, raw = form.get(f"version-{i}", ""), form.get(f"weight-{i}", "").strip()
        if not ref:
            if raw not in ("", "0"):
                raise ValidationError(f"row {i + 1} has a weight but no version", field=f"weight-{i}")
            continue
        if not raw or len(raw) > 4 or not raw.isdigit():
            raise ValidationError(f"the weight of {ref} must be a whole number from 0 to 100", field=f"weight-{i}")
        out.append({"version": ref, "weight": int(raw)})
    return out


def form_rows(targets: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The rows a route form shows: ``targets`` (version, weight), then empty rows to fill in."""
    rows = [{"version": v, "weight": w} for v, w in targets][: routes.MAX_TARGETS]
    spare = max(_SPARE_ROWS, 3 - len(rows))
    return rows + [{"version": "", "weight": ""}] * min(spare, routes.MAX_TARGETS - len(rows))


def _posted_rows(form: Mapping[str, str]) -> list[dict[str, str]]:
    posted = [(form.get(f"version-{i}", ""), form.get(f"weight-{i}", "")) for i in range(routes.MAX_TARGETS)]
    return form_rows([(v, w) for v, w in posted if v or w.strip()])


def _check_name(public_name: str) -> None:
    if not registry.NAME_RE.match(public_name):
        raise PortalError(404, "There is no such route.")


async def _route(page: OrgPage, public_name: str) -> routes.Route:
    _check_name(public_name)
    found = await routes.load_route(handles().stores.db, page.org.id, public_name)
    if found is None:
        raise PortalError(404, "There is no such route in this organization.")
    return found


@blueprint.get("/orgs/<uuid:org_id>/routes")
@org_page("models:read")
async def model_routes(page: OrgPage) -> Response:
    """The organization's routes and their targets."""
    found = await routes.list_routes(handles().stores.db, page.org.id)
    return await render("portal/org/models/routes.html", page=page, routes=found)


async def _form(
    page: OrgPage, state: FormState, rows: list[dict[str, str]], *, public_name: str | None, status: int = 200
) -> Response:
    choices = published_refs(await registry.list_versions(handles().stores.db, page.org.id), page.org.id)
    return await render(
        "portal/org/models/route_form.html",
        status=status,
        page=page,
        state=state,
        rows=rows,
        choices=choices,
        public_name=public_name,
        max_targets=routes.MAX_TARGETS,
    )


@blueprint.get("/orgs/<uuid:org_id>/routes/new")
@org_page("models:write")
async def route_new(page: OrgPage) -> Response:
    """The form for a new route."""
    return await _form(page, FormState(), form_rows([]), public_name=None)


async def _save(page: OrgPage, public_name: str, targets: list[dict[str, Any]]) -> routes.Route:
    h = handles()
    route = await routes.put_route(h.stores.db, page.org.id, public_name, targets)
    await routes.publish_invalidation(h.stores.redis, page.org.id, public_name, h.routes)
    return route


async def _refused(page: OrgPage, form: Mapping[str, str], exc: Exception, *, public_name: str | None) -> Response:
    status = 409 if isinstance(exc, ConflictStateError) else 400
    state = FormState.refused(form, exc, default_field="targets")
    return await _form(page, state, _posted_rows(form), public_name=public_name, status=status)


@blueprint.post("/orgs/<uuid:org_id>/routes")
@org_page("models:write")
async def route_create(page: OrgPage) -> Response:
    """Create a route (a name already routed is refused: edit that route instead)."""
    await home_region(page)
    form = await read_form()
    try:
        public_name = registry.check_name(text(form, "public_name"))
        if await routes.load_route(handles().stores.db, page.org.id, public_name) is not None:
            raise ConflictStateError(f"there is a route {public_name} already; edit it instead")
        await _save(page, public_name, form_targets(form))
    except (ValidationError, ConflictStateError) as exc:
        if getattr(exc, "field", None) == "name":  # the service's word for the route's name
            exc = ValidationError(str(exc), field="public_name")
        return await _refused(page, form, exc, public_name=None)
    await flash(f"The route {public_name} is saved.")
    return see_other("portal.model_routes", org_id=page.org.id)


@blueprint.get("/orgs/<uuid:org_id>/routes/<public_name>/edit")
@org_page("models:write")
async def route_edit(page: OrgPage, public_name: str) -> Response:
    """The form for a route's targets and weights."""
    route = await _route(page, public_name)
    rows = form_rows([(t.ref, str(t.weight)) for t in route.targets if t.ref is not None])
    gone = [t for t in route.targets if t.ref is None]
    message = "Deleted versions are left out of the targets below." if gone else ""
    return await _form(page, FormState(message=message), rows, public_name=public_name)


@blueprint.post("/orgs/<uuid:org_id>/routes/<public_name>")
@org_page("models:write")
async def route_update(page: OrgPage, public_name: str) -> Response:
    """Replace a route's targets."""
    await home_region(page)
    await _route(page, public_name)
    form = await read_form()
    try:
        await _save(page, public_name, form_targets(form))
    except (ValidationError, ConflictStateError, NotFoundError) as exc:
        return await _refused(page, form, exc, public_name=public_name)
    await flash(f"The route {public_name} is saved.")
    return see_other("portal.model_routes", org_id=page.org.id)


@blueprint.get("/orgs/<uuid:org_id>/routes/<public_name>/delete")
@org_page("models:write")
async def route_delete_confirm(page: OrgPage, public_name: str) -> Response:
    """Ask before deleting a route."""
    return await render("portal/org/models/route_delete.html", page=page, route=await _route(page, public_name))


@blueprint.post("/orgs/<uuid:org_id>/routes/<public_name>/delete")
@org_page("models:write")
async def route_delete(page: OrgPage, public_name: str) -> Response:
    """Delete a route on every replica."""
    await home_region(page)
    _check_name(public_name)
    h = handles()
    await routes.delete_route(h.stores.db, page.org.id, public_name)
    await routes.publish_invalidation(h.stores.redis, page.org.id, public_name, h.routes)
    await flash(f"The route {public_name} is deleted.")
    return see_other("portal.model_routes", org_id=page.org.id)
