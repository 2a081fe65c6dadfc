"""Organizations, users, memberships and invitations.

Rules kept here and nowhere else:
- A user may belong to several organizations, with one role in each.
- An organization always keeps at least one owner: the last owner can be neither demoted nor removed.
- Only owners grant, change or remove the owner role (``owners:manage``).
- Nothing tells a caller whether an email is registered: sign-up always answers the same way and mails the
  address (a verification link, or a note that an account exists); login fails with one generic message.
- Email tokens (sign-up, password set, invitations) are random, stored as SHA-256, single-use and expiring.

Modules (private; import from here): :mod:`._common` (records, checks, token helpers), :mod:`._accounts`
(users, sign-in, sign-up), :mod:`._organizations` (organizations and members), :mod:`._invitations`.
"""

from __future__ import annotations

from bitnet_actor.services.tenancy._accounts import (
    authenticate_password,
    get_user,
    issue_password_set_token,
    membership_role,
    request_password_reset,
    set_password_with_token,
    signup_start,
    signup_verify,
    user_memberships,
)
from bitnet_actor.services.tenancy._common import (
    INVITE_TTL,
    PASSWORD_SET_TTL,
    SIGNUP_TTL,
    Member,
    Membership,
    Organization,
    User,
    normalize_email,
)
from bitnet_actor.services.tenancy._invitations import (
    accept_invitation,
    create_invitation,
    list_invitations,
    revoke_invitation,
)
from bitnet_actor.services.tenancy._organizations import (
    admin_create_org,
    change_role,
    create_org,
    get_org,
    list_members,
    org_id_by_name,
    remove_member,
    update_org,
)

__all__ = [
    "INVITE_TTL",
    "PASSWORD_SET_TTL",
    "SIGNUP_TTL",
    "Member",
    "Membership",
    "Organization",
    "User",
    "accept_invitation",
    "admin_create_org",
    "authenticate_password",
    "change_role",
    "create_invitation",
    "create_org",
    "get_org",
    "get_user",
    "issue_password_set_token",
    "list_invitations",
    "list_members",
    "membership_role",
    "normalize_email",
    "org_id_by_name",
    "remove_member",
    "request_password_reset",
    "revoke_invitation",
    "set_password_with_token",
    "signup_start",
    "signup_verify",
    "update_org",
    "user_memberships",
]
