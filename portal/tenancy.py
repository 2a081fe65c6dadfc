"""Who is looking, and in which organization: the one place portal views authenticate and authorize.

- ``load_session`` (before every portal request) reads the API's session cookie through the same service
  (:func:`bitnet_actor.services.authn.from_session`); an unknown or expired session is no session.
- ``@signed_in`` gives a view the :class:`Viewer` (the user and their memberships), or sends the browser to
  the sign-in page with ``next`` set to where it was going.
- ``@org_page(permission)`` serves ``/portal/orgs/<org_id>/...``: it checks the organization in the URL
  against the viewer's memberships (another organization, or one that does not exist, is a 404: nobody
  learns which organizations exist), then ``permission`` against the member's role through
  :func:`bitnet_actor.services.permissions.require` (a 403 page), and gives the view an :class:`OrgPage`.
  Views act on ``page.org.id`` and pass it to the services, which scope every other id in the URL to it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from quart import Response, g, request, url_for

from bitnet_actor.api.auth import client_ip, handles
from bitnet_actor.observability import bind_log_context
from bitnet_actor.services import audit, authn, tenancy
from bitnet_actor.services.errors import AuthenticationError, NotFoundError
from bitnet_actor.services.permissions import require, role_allows
from bitnet_actor.services.sessions import COOKIE_NAME
from portal.errors import PortalError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from bitnet_actor.services.permissions import Permission
    from bitnet_actor.services.sessions import Session

    View = Callable[..., Awaitable[Any]]

__all__ = ["SECTIONS", "OrgPage", "Section", "Viewer", "current_viewer", "load_session", "org_page", "signed_in"]


@dataclass(frozen=True, slots=True)
class Section:
    """One area of an organization's pages, in the navigation when the role has ``permission``."""

    endpoint: str
    label: str
    permission: Permission
    element_id: str


SECTIONS: Final = (
    Section("portal.dashboard", "Dashboard", "org:read", "nav-dashboard"),
    Section("portal.keys", "API keys", "keys:read", "nav-keys"),
    Section("portal.playground", "Playground", "inference", "nav-playground"),
    Section("portal.usage_page", "Usage", "billing:read", "nav-usage"),
    Section("portal.billing", "Billing", "billing:read", "nav-billing"),
    Section("portal.team", "Team", "members:read", "nav-team"),
    Section("portal.audit_log", "Audit log", "audit:read", "nav-audit"),
    Section("portal.settings", "Settings", "org:read", "nav-settings"),
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """A signed-in user, their session and their organizations (oldest first)."""

    user: tenancy.User
    session: Session
    memberships: tuple[tenancy.Membership, ...]

    @property
    def actor(self) -> audit.Actor:
        """The audit actor of this request."""
        return audit.Actor(user_id=self.user.id, ip=client_ip(), user_agent=request.headers.get("User-Agent", "")[:512])


@dataclass(frozen=True, slots=True)
class OrgPage:
    """The viewer inside one of their organizations, with their role there."""

    viewer: Viewer
    org: tenancy.Organization
    role: str

    def can(self, permission: Permission) -> bool:
        """Whether the role allows ``permission`` (for what a page offers; actions are checked again)."""
        return role_allows(self.role, permission)

    def sections(self) -> list[Section]:
        """The areas this role may open."""
        return [s for s in SECTIONS if self.can(s.permission)]

    @property
    def actor(self) -> audit.Actor:
        """The audit actor of this request."""
        return self.viewer.actor


async def load_session() -> None:
    """Put the request's live session, if any, in ``g.portal_session``."""
    g.portal_session = None
    session_id = request.cookies.get(COOKIE_NAME)
    if not session_id:
        return
    try:
        principal = await authn.from_session(handles().auth, session_id, unsafe=False, csrf_token=None)
    except AuthenticationError:
        return
    g.portal_session = principal.session


async def current_viewer() -> Viewer | None:
    """The signed-in user of this request (looked up once per request), or None."""
    if "portal_viewer" in g:
        found: Viewer | None = g.portal_viewer
        return found
    viewer = None
    session = g.get("portal_session")
    if session is not None:
        db = handles().stores.db
        try:
            user = await tenancy.get_user(db, UUID(session.user_id))
        except NotFoundError:  # disabled since the session began
            user = None
        if user is not None:
            viewer = Viewer(user, session, tuple(await tenancy.user_memberships(db, user.id)))
    g.portal_viewer = viewer
    return viewer


def login_redirect() -> Response:
    """To the sign-in page, coming back here afterwards (a page, not a form's target)."""
    target = request.full_path.rstrip("?") if request.method == "GET" else "/portal"
    return Response("", status=303, headers={"Location": url_for("portal.login", next=target)})


def signed_in(view: View) -> View:
    """Serve ``view(viewer, **kwargs)`` to a signed-in user; send anyone else to sign in."""

    @functools.wraps(view)
    async def wrapper(**kwargs: Any) -> Any:
        viewer = await current_viewer()
        if viewer is None:
            return login_redirect()
        return await view(viewer, **kwargs)

    return wrapper


def org_page(permission: Permission) -> Callable[[View], View]:
    """Serve ``view(page, **kwargs)`` for the organization ``<uuid:org_id>`` of the URL, to its members whose
    role allows ``permission``: 404 for anyone else signed in, the sign-in page for anyone not."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(org_id: UUID, **kwargs: Any) -> Any:
            viewer = await current_viewer()
            if viewer is None:
                return login_redirect()
            membership = next((m for m in viewer.memberships if m.org.id == org_id), None)
            if membership is None:
                raise PortalError(404, "There is no such page.")
            require(permission=permission, role=membership.role)
            g.org_id = org_id
            bind_log_context(org_id=str(org_id))
            return await view(OrgPage(viewer, membership.org, membership.role), **kwargs)

        return wrapper

    return decorate
