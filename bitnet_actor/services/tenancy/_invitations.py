"""Invitations: inviting an address into an organization with a role, listing, revoking and accepting them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bitnet_actor.errors import ConflictError
from bitnet_actor.services import audit, passwords
from bitnet_actor.services.email import EmailMessage
from bitnet_actor.services.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)
from bitnet_actor.services.permissions import role_allows
from bitnet_actor.services.tenancy._common import (
    INVITE_TTL,
    _hash_token,
    _role,
    _token,
    normalize_email,
)

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.services.email import EmailSender
    from bitnet_actor.stores.postgres import Database

__all__ = ["accept_invitation", "create_invitation", "list_invitations", "revoke_invitation"]


async def create_invitation(
    db: Database,
    mailer: EmailSender,
    org_id: UUID,
    *,
    email: object,
    role: object,
    actor_role: str,
    actor: audit.Actor,
    link_base: str,
) -> dict[str, Any]:
    """Invite an address into ``org_id`` with a role; the link goes to the mailer, never to the caller."""
    address = normalize_email(email)
    new_role = _role(role)
    if new_role == "owner" and not role_allows(actor_role, "owners:manage"):
        raise PermissionDeniedError("only an owner can invite an owner")
    token, token_hash = _token()
    expires = datetime.now(UTC) + INVITE_TTL
    async with db.transaction(org_id=org_id) as tx:
        row = await tx.fetchrow(
            "INSERT INTO invitations (org_id, email, role, token_hash, invited_by, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, email, role, expires_at, created_at",
            org_id,
            address,
            new_role,
            token_hash,
            actor.user_id,
            expires,
        )
        assert row is not None
        name = await tx.fetchval("SELECT name FROM organizations WHERE id = $1", org_id)
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="invitation.created",
            target_type="invitation",
            target_id=row["id"],
            details={"email": address, "role": new_role},
        )
    await mailer.send(
        EmailMessage(
            address,
            f"You are invited to {name} on bitnet-actor",
            f"Accept the invitation ({new_role}): {link_base}?token={token}\nThe link works once, for 7 days.",
        )
    )
    return {**dict(row), "status": "pending"}


async def list_invitations(db: Database, org_id: UUID) -> list[dict[str, Any]]:
    """Invitations of ``org_id`` with their status."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT id, email, role, expires_at, created_at, accepted_at, revoked_at FROM invitations"
            " ORDER BY created_at DESC"
        )
    now = datetime.now(UTC)
    out = []
    for r in rows:
        status = (
            "accepted"
            if r["accepted_at"]
            else "revoked"
            if r["revoked_at"]
            else "expired"
            if r["expires_at"] <= now
            else "pending"
        )
        out.append(
            {
                "id": r["id"],
                "email": r["email"],
                "role": r["role"],
                "expires_at": r["expires_at"],
                "created_at": r["created_at"],
                "status": status,
            }
        )
    return out


async def revoke_invitation(db: Database, org_id: UUID, invitation_id: UUID, *, actor: audit.Actor) -> None:
    """Withdraw a pending invitation.

    Raises:
        NotFoundError: no such pending invitation in ``org_id``.
    """
    async with db.transaction(org_id=org_id) as tx:
        done = await tx.fetchval(
            "UPDATE invitations SET revoked_at = now() WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL"
            " RETURNING id",
            invitation_id,
        )
        if done is None:
            raise NotFoundError("no such pending invitation")
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="invitation.revoked",
            target_type="invitation",
            target_id=invitation_id,
        )


async def accept_invitation(
    db: Database, *, token: object, user_id: UUID | None, password: object = None, actor: audit.Actor
) -> tuple[UUID, UUID]:
    """Accept an invitation: as the signed-in user whose email it names, or as a new account (with a password).

    Returns:
        (user id, organization id).

    Raises:
        AuthenticationError: the token is unknown, used, revoked or expired, or names another email.
    """
    token_hash = _hash_token(token)
    invite = await db.fetchrow("SELECT * FROM bitnet_invitation_by_hash($1)", token_hash)
    if invite is None or invite["accepted_at"] or invite["revoked_at"] or invite["expires_at"] <= datetime.now(UTC):
        raise AuthenticationError("the invitation is invalid, used or expired")
    org_id: UUID = invite["org_id"]
    if user_id is None:
        passwords.check_policy(password)
        assert isinstance(password, str)
        hashed = await passwords.hash_password(password)
        try:
            user_id = await db.fetchval(
                "INSERT INTO users (email, password_hash, email_verified) VALUES ($1, $2, true) RETURNING id",
                invite["email"],
                hashed,
            )
        except ConflictError:
            raise AuthenticationError("an account with this email exists: sign in to accept") from None
    else:
        email = await db.fetchval("SELECT email FROM users WHERE id = $1", user_id)
        if email is None or email.lower() != invite["email"].lower():
            raise AuthenticationError("this invitation was sent to another email address")
    assert user_id is not None
    async with db.transaction(org_id=org_id) as tx:
        taken = await tx.fetchval(
            "UPDATE invitations SET accepted_at = now() WHERE id = $1 AND accepted_at IS NULL RETURNING id",
            invite["id"],
        )
        if taken is None:
            raise AuthenticationError("the invitation is invalid, used or expired")
        await tx.execute(
            "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)"
            " ON CONFLICT (org_id, user_id) DO NOTHING",
            org_id,
            user_id,
            invite["role"],
        )
        await audit.record(
            tx,
            org_id=org_id,
            actor=audit.Actor(user_id=user_id, ip=actor.ip, user_agent=actor.user_agent),
            action="invitation.accepted",
            target_type="invitation",
            target_id=invite["id"],
            details={"role": invite["role"]},
        )
    return user_id, org_id
