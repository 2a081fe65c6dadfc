"""The team: members and their roles, invitations; changing roles, removing members, inviting, revoking.

The role rules are the services' (:mod:`bitnet_actor.services.permissions`, :mod:`~bitnet_actor.services
.tenancy`), as the API applies them: ``members:read`` sees the members, ``members:manage`` changes them and
sees the invitations; granting, changing or removing the owner role needs an owner; an organization keeps
an owner; anyone may leave. Member and invitation ids in the URL are acted on inside the page's
organization only (another's is a 404).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import url_for

from bitnet_actor.api.auth import handles
from bitnet_actor.services import tenancy
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.permissions import ROLES, require, role_allows
from portal.forms import FormState, read_form, text
from portal.tenancy import OrgPage, org_page
from portal.web import blueprint, flash, render, see_other

if TYPE_CHECKING:
    from uuid import UUID

    from quart import Response

__all__ = ["grantable_roles"]


def grantable_roles(role: str) -> list[str]:
    """The roles someone with ``role`` may give (the owner role only by an owner)."""
    return [r for r in ROLES if r != "owner" or role_allows(role, "owners:manage")]


async def _team(page: OrgPage, state: FormState, *, status: int = 200) -> Response:
    db = handles().stores.db
    members = await tenancy.list_members(db, page.org.id)
    invitations = await tenancy.list_invitations(db, page.org.id) if page.can("members:manage") else []
    return await render(
        "portal/org/team.html",
        status=status,
        page=page,
        members=members,
        invitations=invitations,
        roles=grantable_roles(page.role),
        role_options=[(r, r) for r in grantable_roles(page.role)],
        state=state,
    )


@blueprint.get("/orgs/<uuid:org_id>/team")
@org_page("members:read")
async def team(page: OrgPage) -> Response:
    """Members, roles and (for managers) invitations."""
    return await _team(page, FormState(values={"role": "member"}))


@blueprint.post("/orgs/<uuid:org_id>/team/members/<uuid:user_id>/role")
@org_page("members:manage")
async def member_role(page: OrgPage, user_id: UUID) -> Response:
    """Give a member another role."""
    form = await read_form()
    member = await tenancy.change_role(
        handles().stores.db, page.org.id, user_id, role=form.get("role", ""), actor_role=page.role, actor=page.actor
    )
    await flash(f"{member.email} is now {member.role}.")
    return see_other("portal.team", org_id=page.org.id)


@blueprint.post("/orgs/<uuid:org_id>/team/members/<uuid:user_id>/remove")
@org_page("org:read")
async def member_remove(page: OrgPage, user_id: UUID) -> Response:
    """Remove a member (or leave, for one's own row)."""
    leaving = user_id == page.viewer.user.id
    if not leaving:
        require(permission="members:manage", role=page.role)
    await tenancy.remove_member(handles().stores.db, page.org.id, user_id, actor_role=page.role, actor=page.actor)
    if leaving:
        await flash(f"You left {page.org.name}.")
        return see_other("portal.orgs")
    await flash("The member is removed.")
    return see_other("portal.team", org_id=page.org.id)


@blueprint.post("/orgs/<uuid:org_id>/team/invitations")
@org_page("members:manage")
async def invite(page: OrgPage) -> Response:
    """Invite an address with a role; the link goes by email only."""
    form = await read_form()
    try:
        invitation = await tenancy.create_invitation(
            handles().stores.db,
            handles().auth.mailer,
            page.org.id,
            email=text(form, "email"),
            role=form.get("role", ""),
            actor_role=page.role,
            actor=page.actor,
            link_base=handles().settings.base_url + url_for("portal.invitation_accept"),
        )
    except ValidationError as exc:
        return await _team(page, FormState.refused(form, exc, default_field="email"), status=400)
    await flash(f"An invitation is on its way to {invitation['email']}.")
    return see_other("portal.team", org_id=page.org.id)


@blueprint.post("/orgs/<uuid:org_id>/team/invitations/<uuid:invitation_id>/revoke")
@org_page("members:manage")
async def invitation_revoke(page: OrgPage, invitation_id: UUID) -> Response:
    """Withdraw a pending invitation."""
    await tenancy.revoke_invitation(handles().stores.db, page.org.id, invitation_id, actor=page.actor)
    await flash("The invitation is withdrawn.")
    return see_other("portal.team", org_id=page.org.id)
