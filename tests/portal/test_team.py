"""Team pages (portal/views/team.py): members, roles, removal, leaving, invitations; the API's role rules
through the same services, and other tenants' ids."""

from __future__ import annotations

import uuid

from bitnet_actor.services import tenancy
from tests.portal.conftest import Browser, Page, token_link


def csrf_of(page: Page) -> str:
    return page.doc.find("input", name="csrf_token").attrs["value"]  # type: ignore[union-attr]


async def test_owner_invites_changes_roles_and_removes(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    viewer = await h.invite(owner, org, "viewer")
    b = browser.as_caller(owner)
    team = await b.get(f"/portal/orgs/{org}/team")
    assert team.h1() == "Team" and str(viewer.email) in team.by_id(f"member-{viewer.user_id}").text()
    roles = [o.attrs["value"] for o in team.by_id("invite-role").find_all("option")]
    assert roles == ["owner", "admin", "member", "viewer", "billing"]  # an owner may invite owners
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    r = await b.submit(team, "invite-form", {"email": email, "role": "member"})
    assert r.status == 303
    team = await b.follow(r)
    assert f"An invitation is on its way to {email}" in team.by_id("flashes").text()
    assert token_link(h, email).startswith("/portal/invitations/accept?token=")
    (invitation,) = [
        i for i in await tenancy.list_invitations(h.system.stores.db, uuid.UUID(org)) if i["email"] == email
    ]
    assert "pending" in team.by_id(f"invitation-{invitation['id']}").text()
    r = await b.submit(team, f"revoke-invitation-{invitation['id']}-form")
    team = await b.follow(r)
    assert "revoked" in team.by_id(f"invitation-{invitation['id']}").text()
    bad = await b.submit(team, "invite-form", {"email": "not an address", "role": "member"})
    assert bad.status == 400 and bad.by_id("invite-email").attrs["aria-invalid"] == "true"
    # Role change and removal.
    form = team.by_id(f"change-role-{viewer.user_id}")
    assert form is not None
    r = await b.post(
        f"/portal/orgs/{org}/team/members/{viewer.user_id}/role", [("csrf_token", csrf_of(team)), ("role", "admin")]
    )
    team = await b.follow(r)
    assert f"{viewer.email} is now admin" in team.by_id("flashes").text()
    r = await b.submit(team, f"remove-{viewer.user_id}-form")
    team = await b.follow(r)
    assert team.doc.find(id=f"member-{viewer.user_id}") is None


async def test_the_role_rules_are_the_apis(browser: Browser) -> None:
    h = browser.h
    owner = await h.signup()
    org = next(iter(owner.orgs.values()))
    admin = Browser(h).as_caller(await h.invite(owner, org, "admin"))
    team = await admin.get(f"/portal/orgs/{org}/team")
    assert "owner" not in [o.attrs["value"] for o in team.by_id("invite-role").find_all("option")]
    assert team.doc.find(id=f"remove-{owner.user_id}") is None  # an admin cannot remove an owner
    token = csrf_of(team)
    r = await admin.post(
        f"/portal/orgs/{org}/team/members/{owner.user_id}/role", [("csrf_token", token), ("role", "viewer")]
    )
    assert r.status == 403 and "only an owner" in r.by_id("error-message").text()
    r = await admin.post(
        f"/portal/orgs/{org}/team/invitations", [("csrf_token", token), ("email", "o@example.com"), ("role", "owner")]
    )
    assert r.status == 403
    # The last owner can neither leave nor be demoted.
    o = Browser(h).as_caller(owner)
    team = await o.get(f"/portal/orgs/{org}/team")
    r = await o.submit(team, "leave-org-form")
    assert r.status == 409 and "at least one owner" in r.text
    # Members read the team, change nothing, and may leave.
    member = await h.invite(owner, org, "member")
    m = Browser(h).as_caller(member)
    team = await m.get(f"/portal/orgs/{org}/team")
    assert (
        team.status == 200 and team.doc.find(id="invite-form") is None and team.doc.find(id="invitations-table") is None
    )
    r = await m.post(f"/portal/orgs/{org}/team/members/{owner.user_id}/remove", [("csrf_token", csrf_of(team))])
    assert r.status == 403
    r = await m.submit(team, "leave-org-form")
    assert r.status == 303 and r.location == "/portal/orgs"
    assert (await m.get(f"/portal/orgs/{org}/team")).status == 404  # no longer a member


async def test_another_orgs_members_and_invitations_are_404s(browser: Browser) -> None:
    h = browser.h
    a_owner, b_owner = await h.signup(), await h.signup()
    org_a, org_b = next(iter(a_owner.orgs.values())), next(iter(b_owner.orgs.values()))
    r = await h.call(
        "POST", f"/api/v1/orgs/{org_b}/invitations", b_owner, json={"email": "b@example.com", "role": "viewer"}
    )
    b_invitation = (await r.get_json())["id"]
    a = Browser(h).as_caller(a_owner)
    token = csrf_of(await a.get(f"/portal/orgs/{org_a}/team"))
    for path, data in (
        (f"/portal/orgs/{org_a}/team/members/{b_owner.user_id}/role", [("role", "viewer")]),
        (f"/portal/orgs/{org_a}/team/members/{b_owner.user_id}/remove", []),
        (f"/portal/orgs/{org_a}/team/invitations/{b_invitation}/revoke", []),
        (f"/portal/orgs/{org_b}/team/members/{b_owner.user_id}/remove", []),
    ):
        r = await a.post(path, [("csrf_token", token), *data])
        assert r.status == 404, path
    assert [m.role for m in await tenancy.list_members(h.system.stores.db, uuid.UUID(org_b))] == ["owner"]
    (inv,) = await tenancy.list_invitations(h.system.stores.db, uuid.UUID(org_b))
    assert inv["status"] == "pending"
