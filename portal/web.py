"""The portal's plumbing: its blueprints, page rendering, flash messages and static files.

- ``blueprint`` serves ``/portal/...``; ``root`` serves ``/`` (to the portal) and the paths of the links the
  JSON API's emails carry (``/signup/verify``, ``/invitations/accept``: to their portal pages).
- Templates are Jinja2 with autoescaping always on (not by file name) and strict undefined variables: every
  value a page shows is escaped, whatever an organization, key or user is called.
- Flash messages live beside the session (:meth:`SessionStore.add_flash`) until the next page shows them.
- Static files are served under names that carry a hash of their content (``portal.3f2a...css``), so they
  are cached for a year and a changed file is a new URL.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jinja2
from quart import Blueprint, Response, g, request, url_for

from bitnet_actor.api.auth import handles
from bitnet_actor.services.sessions import Flash
from portal.errors import TITLES, PortalError, install_error_pages
from portal.security import add_security_headers, check_csrf, form_token
from portal.tenancy import current_viewer, load_session

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ASSETS", "blueprint", "flash", "redirect_to", "render", "render_error", "root", "see_other", "static_url"]

blueprint = Blueprint("portal", __name__, url_prefix="/portal")
root = Blueprint("portal_root", __name__)

_HERE = Path(__file__).parent
_STATIC_CACHE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Asset:
    """A static file under its content-hashed name."""

    name: str
    hashed: str
    body: bytes
    content_type: str


def _load_assets(folder: Path) -> dict[str, Asset]:
    out = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:16]
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        kind += "; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript") else ""
        out[path.name] = Asset(path.name, f"{path.stem}.{digest}{path.suffix}", body, kind)
    return out


ASSETS: Final = _load_assets(_HERE / "static")
_BY_HASHED: Final = {a.hashed: a for a in ASSETS.values()}


def static_url(name: str) -> str:
    """The URL of the static file ``name`` (its hashed form)."""
    return url_for("portal.static_file", filename=ASSETS[name].hashed)


def _number(value: int | float | None) -> str:
    return "" if value is None else f"{value:,}"


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}${cents // 100:,}.{cents % 100:02d}"


def _when(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _iso(value: datetime | date | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value.isoformat()


env: Final = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.globals.update(url_for=url_for, static_url=static_url, csrf_token=form_token)
env.filters.update(number=_number, money=_money, when=_when, iso=_iso)


async def flash(text: str, category: str = "success") -> None:
    """Show ``text`` on the next page this browser's session renders."""
    session = g.get("portal_session")
    if session is not None:
        await handles().auth.sessions.add_flash(session.id, Flash(category, text))


async def _pop_flashes() -> list[Flash]:
    session = g.get("portal_session")
    return await handles().auth.sessions.pop_flashes(session.id) if session is not None else []


async def render(
    template: str, *, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any
) -> Response:
    """The page ``template`` rendered with ``context``, plus ``viewer``, ``page`` (an ``OrgPage`` or None) and
    the session's flash messages."""
    viewer = context.pop("viewer", None) or await current_viewer()
    page = context.pop("page", None)
    html = env.get_template(template).render(viewer=viewer, page=page, flashes=await _pop_flashes(), **context)
    return Response(html, status=status, headers=dict(headers or {}), content_type="text/html; charset=utf-8")


async def render_error(status: int, message: str, headers: Mapping[str, str]) -> Response:
    """The error page of ``status`` (touching no store: it also answers when one is down)."""
    g.portal_form_targets = ()  # whatever the failed page was to allow, the error page posts nowhere else
    html = env.get_template("portal/error.html").render(
        viewer=g.get("portal_viewer"),
        page=None,
        flashes=[],
        status=status,
        title=TITLES.get(status, "Error"),
        message=message,
    )
    return Response(html, status=status, headers=dict(headers), content_type="text/html; charset=utf-8")


def redirect_to(location: str, status: int = 303) -> Response:
    """A redirect to ``location`` (a path of this site)."""
    return Response("", status=status, headers={"Location": location})


def see_other(endpoint: str, **values: Any) -> Response:
    """A 303 redirect to ``endpoint`` (after a form: the browser GETs the next page)."""
    return redirect_to(url_for(endpoint, **values))


@blueprint.before_request
async def _before() -> None:
    g.portal_session = None
    if request.endpoint == "portal.static_file":
        return
    await load_session()
    if request.method == "POST":
        await check_csrf()


@blueprint.after_request
async def _after(response: Response) -> Response:
    return add_security_headers(response)


@root.after_request
async def _after_root(response: Response) -> Response:
    return add_security_headers(response)


install_error_pages(blueprint, render_error)
install_error_pages(root, render_error)


@blueprint.get("/static/<filename>")
async def static_file(filename: str) -> Response:
    """A static file by its hashed name, cached for a year."""
    asset = _BY_HASHED.get(filename)
    if asset is None:
        raise PortalError(404, "There is no such file.")
    return Response(asset.body, content_type=asset.content_type, headers={"Cache-Control": _STATIC_CACHE})


@blueprint.route("/<path:rest>", methods=["GET", "POST"])
async def not_found(rest: str) -> Response:
    """Any other path under /portal: the portal's own 404 page."""
    raise PortalError(404, "There is no such page.")
