"""Models: the organization's models (and the platform's it can call), a model's versions and aliases, a
version's facts and lineage, its download, deprecation and deletion.

Everything goes through :mod:`bitnet_actor.services.models.registry` (and ``downloads``), as the JSON API's
registry routes do, with the same rules: ``models:read`` sees, ``models:write`` changes; writes and
downloads are served by the organization's home region only (421 elsewhere, as
:func:`bitnet_actor.api.regions.model_write_access` answers). Names and versions in the URL are looked up
inside the page's organization (its own versions first, then the platform's); anyone else's are a 404.
Platform models are read-only here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import url_for

from bitnet_actor.api.auth import handles
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.regions import check_home_region
from bitnet_actor.services.errors import ConflictStateError, NotFoundError, ValidationError
from bitnet_actor.services.models import downloads, registry
from portal.errors import PortalError
from portal.forms import FormState, read_form, text
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, flash, redirect_to, render, see_other

if TYPE_CHECKING:
    from uuid import UUID

    from quart import Response

__all__ = ["LineageNode", "ModelGroup", "home_region", "published_refs", "size_text", "version_format", "version_size"]


async def home_region(page: OrgPage) -> None:
    """Nothing when this replica serves the organization's region (model bytes and writes live there).

    Raises:
        PortalError: 421 naming the organization's region, as the API answers.
    """
    try:
        await check_home_region(handles(), page.org.id)
    except ApiError as exc:
        raise PortalError(exc.status, exc.message) from None


def version_format(v: registry.ModelVersion) -> str:
    """The stored file's format as uploaded (``gguf``, ``tar``, ...), else the inspected one, else ``""``."""
    return str(v.origin_details.get("format") or v.facts.get("format") or "")


def version_size(v: registry.ModelVersion) -> int | None:
    """The stored file's size in bytes, when the registry recorded it."""
    size = v.origin_details.get("bytes")
    return size if isinstance(size, int) else None


_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB")


def size_text(size: int | None) -> str:
    """``2,731,008 bytes (2.6 MiB)``; ``""`` for an unknown size."""
    if size is None:
        return ""
    exponent = next((e for e in range(len(_UNITS) - 1, 0, -1) if size >= 1024**e), 0)
    if exponent == 0:
        return f"{size:,} bytes"
    return f"{size:,} bytes ({size / 1024**exponent:.1f} {_UNITS[exponent]})"


@dataclass(slots=True)
class ModelGroup:
    """One model as a listing shows it: its versions (newest first) and aliases."""

    name: str
    platform: bool
    versions: list[registry.ModelVersion] = field(default_factory=list)

    @property
    def aliases(self) -> dict[str, str]:
        """alias -> version."""
        return {a: v.version for v in self.versions for a in sorted(v.aliases)}

    @property
    def latest(self) -> registry.ModelVersion | None:
        """The version ``latest`` points at."""
        return next((v for v in self.versions if registry.LATEST in v.aliases), None)


def _groups(versions: list[registry.ModelVersion]) -> list[ModelGroup]:
    by_key: dict[tuple[bool, str], ModelGroup] = {}
    for v in versions:  # the service's order: own first, by name, newest first
        key = (v.org_id is None, v.name)
        by_key.setdefault(key, ModelGroup(v.name, v.org_id is None)).versions.append(v)
    return list(by_key.values())


@dataclass(frozen=True, slots=True)
class LineageNode:
    """A version and the versions made from it (a tree, as the registry's parent links record it)."""

    version: registry.ModelVersion
    children: tuple[LineageNode, ...]


def _derived(root: registry.ModelVersion, everything: list[registry.ModelVersion]) -> tuple[LineageNode, ...]:
    children: dict[UUID, list[registry.ModelVersion]] = defaultdict(list)
    for v in everything:
        if v.parent_id is not None:
            children[v.parent_id].append(v)

    def grow(v: registry.ModelVersion, seen: frozenset[UUID]) -> LineageNode:
        kids = sorted(children.get(v.id, []), key=lambda c: c.created_at)
        return LineageNode(v, tuple(grow(c, seen | {c.id}) for c in kids if c.id not in seen))

    return grow(root, frozenset({root.id})).children


def published_refs(versions: list[registry.ModelVersion], org_id: UUID) -> list[str]:
    """``name:version`` of the organization's own ready or deprecated versions (what routes and jobs take)."""
    return sorted(v.ref for v in versions if v.org_id == org_id and v.state in ("ready", "deprecated"))


def _check_name(name: str) -> None:
    if not registry.NAME_RE.match(name):
        raise PortalError(404, "There is no such model.")


async def _versions_of(page: OrgPage, name: str) -> ModelGroup:
    """The model ``name`` as the organization sees it: its own versions, else the platform's."""
    _check_name(name)
    groups = _groups(await registry.list_versions(handles().stores.db, page.org.id, name))
    if not groups:
        raise PortalError(404, "There is no such model in this organization.")
    return next((g for g in groups if not g.platform), groups[0])


async def _version(page: OrgPage, name: str, version: str) -> registry.ModelVersion:
    _check_name(name)
    if not registry.VERSION_RE.match(version):
        raise PortalError(404, "There is no such version.")
    try:
        return await registry.get_version(handles().stores.db, page.org.id, name, version)
    except NotFoundError:
        raise PortalError(404, "There is no such version of this model.") from None


def _helpers() -> dict[str, Any]:
    return {"format_of": version_format, "size_of": lambda v: size_text(version_size(v))}


@blueprint.get("/orgs/<uuid:org_id>/models")
@org_page("models:read")
async def models(page: OrgPage) -> Response:
    """The organization's models, then the platform's."""
    groups = _groups(await registry.list_versions(handles().stores.db, page.org.id))
    return await render(
        "portal/org/models/list.html",
        page=page,
        own=[g for g in groups if not g.platform],
        platform=[g for g in groups if g.platform],
    )


async def _model_page(page: OrgPage, name: str, state: FormState, *, status: int = 200) -> Response:
    model = await _versions_of(page, name)
    everything = await registry.list_versions(handles().stores.db, page.org.id)
    by_id = {v.id: v for v in everything}
    published = [v.version for v in model.versions if v.state in ("ready", "deprecated")]
    return await render(
        "portal/org/models/model.html",
        status=status,
        page=page,
        model=model,
        parents={v.id: by_id.get(v.parent_id) for v in model.versions if v.parent_id is not None},
        published=published,
        version_options=[(v, v) for v in published],
        writable=page.can("models:write") and not model.platform,
        state=state,
        **_helpers(),
    )


@blueprint.get("/orgs/<uuid:org_id>/models/<name>")
@org_page("models:read")
async def model(page: OrgPage, name: str) -> Response:
    """One model: its versions and aliases."""
    return await _model_page(page, name, FormState())


@blueprint.post("/orgs/<uuid:org_id>/models/<name>/aliases")
@org_page("models:write")
async def alias_set(page: OrgPage, name: str) -> Response:
    """Point an alias at a published version (a new alias, or moving one)."""
    await home_region(page)
    await _versions_of(page, name)
    form = await read_form()
    try:
        alias = text(form, "alias")
        moved = await registry.set_alias(handles().stores.db, page.org.id, name, alias, text(form, "version"))
    except (ValidationError, NotFoundError, ConflictStateError) as exc:
        status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictStateError) else 400
        return await _model_page(page, name, FormState.refused(form, exc, default_field="version"), status=status)
    await flash(f"{name}@{alias} now points at version {moved.version}.")
    return see_other("portal.model", org_id=page.org.id, name=name)


@blueprint.post("/orgs/<uuid:org_id>/models/<name>/aliases/<alias>/remove")
@org_page("models:write")
async def alias_remove(page: OrgPage, name: str, alias: str) -> Response:
    """Remove an alias (``latest`` stays: it follows the newest version)."""
    await home_region(page)
    _check_name(name)
    await registry.delete_alias(handles().stores.db, page.org.id, name, alias)
    await flash(f"The alias {name}@{alias} is removed.")
    return see_other("portal.model", org_id=page.org.id, name=name)


@blueprint.get("/orgs/<uuid:org_id>/models/<name>/versions/<version>")
@org_page("models:read")
async def model_version(page: OrgPage, name: str, version: str) -> Response:
    """One version: state, file, facts, evals, origin, lineage; download, deprecate, delete."""
    v = await _version(page, name, version)
    db = handles().stores.db
    ancestors = list(reversed(await registry.lineage(db, page.org.id, name, version)))  # the root first
    own = v.org_id == page.org.id
    return await render(
        "portal/org/models/version.html",
        page=page,
        v=v,
        ancestors=ancestors,
        derived=_derived(v, await registry.list_versions(db, page.org.id)),
        writable=page.can("models:write") and own,
        downloadable=page.can("models:write") and own and v.blob_id is not None,
        **_helpers(),
    )


@blueprint.post("/orgs/<uuid:org_id>/models/<name>/versions/<version>/download")
@org_page("models:write")
async def version_download(page: OrgPage, name: str, version: str) -> Response:
    """To a short-lived signed download link of the version's file (the API's ``.../download``)."""
    await home_region(page)
    _check_name(name)
    h = handles()
    _, link = await downloads.make_link(h.stores.db, h.link_key, page.org.id, name, version)
    return redirect_to(f"/api/v1/model-downloads/{link.token}")


@blueprint.post("/orgs/<uuid:org_id>/models/<name>/versions/<version>/deprecate")
@org_page("models:write")
async def version_deprecate(page: OrgPage, name: str, version: str) -> Response:
    """Mark a ready version deprecated (it keeps serving)."""
    await home_region(page)
    _check_name(name)
    await registry.deprecate(handles().stores.db, page.org.id, name, version)
    await flash(f"{name}:{version} is deprecated; it keeps serving.")
    return see_other("portal.model_version", org_id=page.org.id, name=name, version=version)


async def _delete_page(page: OrgPage, v: registry.ModelVersion, state: FormState, *, status: int = 200) -> Response:
    return await render("portal/org/models/version_delete.html", status=status, page=page, v=v, state=state)


@blueprint.get("/orgs/<uuid:org_id>/models/<name>/versions/<version>/delete")
@org_page("models:write")
async def version_delete_confirm(page: OrgPage, name: str, version: str) -> Response:
    """Ask before deleting a version."""
    v = await _version(page, name, version)
    if v.org_id != page.org.id:
        raise PortalError(404, "There is no such version of this organization.")
    return await _delete_page(page, v, FormState())


@blueprint.post("/orgs/<uuid:org_id>/models/<name>/versions/<version>/delete")
@org_page("models:write")
async def version_delete(page: OrgPage, name: str, version: str) -> Response:
    """Delete a version (refused while a route sends it traffic); its file goes when nothing else uses it."""
    await home_region(page)
    v = await _version(page, name, version)
    h = handles()
    try:
        object_key = await registry.delete_version(h.stores.db, page.org.id, name, version)
    except ConflictStateError as exc:
        return await _delete_page(page, v, FormState(message=str(exc)), status=409)
    if object_key is not None:
        await h.model_objects.delete(page.org.id, object_key)
    await flash(f"{name}:{version} is deleted.")
    left = await registry.list_versions(h.stores.db, page.org.id, name)
    if any(x.org_id == page.org.id for x in left):
        return see_other("portal.model", org_id=page.org.id, name=name)
    return redirect_to(url_for("portal.models", org_id=page.org.id))
