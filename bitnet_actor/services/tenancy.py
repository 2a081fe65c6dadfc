"""Organizations, users, memberships and invitations.

Rules kept here and nowhere else:
- A user may belong to several organizations, with one role in each.
- An organization always keeps at least one owner: the last owner can be neither demoted nor removed.
- Only owners grant, change or remove the owner role (``owners:manage``).
- Nothing tells a caller whether an email is registered: sign-up always answers the same way and mails the
  address (a verification link, or a note that an account exists); login fails with one generic message.
- Email tokens (sign-up, password set, invitations) are random, stored as SHA-256, single-use and expiring.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from bitnet_actor.errors import ConflictError
from bitnet_actor.services import audit, passwords
from bitnet_actor.services.email import EmailMessage
from bitnet_actor.services.errors import (
    AuthenticationError,
    ConflictStateError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from bitnet_actor.services.permissions import ROLES, role_allows

if TYPE_CHECKING:
    from bitnet_actor.services.email import EmailSender
    from bitnet_actor.services.throttle import LoginThrottle
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = [
    "Member",
    "Membership",
    "Organization",
    "User",
    "accept_invitation",
    "authenticate_password",
    "change_role",
    "create_invitation",
    "create_org",
    "get_org",
    "get_user",
    "list_invitations",
    "list_members",
    "membership_role",
    "normalize_email",
    "remove_member",
    "revoke_invitation",
    "set_password_with_token",
    "signup_start",
    "signup_verify",
    "update_org",
    "user_memberships",
]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}$")
SIGNUP_TTL = timedelta(hours=24)
INVITE_TTL = timedelta(days=7)
PASSWORD_SET_TTL = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class User:
    """A person who can sign in."""

    id: UUID
    email: str
    name: str
    email_verified: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Organization:
    """A tenant."""

    id: UUID
    name: str
    plan: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Membership:
    """One of a user's organizations and the role there."""

    org: Organization
    role: str


@dataclass(frozen=True, slots=True)
class Member:
    """A member of an organization as listed."""

    user_id: UUID
    email: str
    name: str
    role: str
    joined_at: datetime


def normalize_email(email: object, *, field: str = "email") -> str:
    """Trimmed email; domain lower-cased.

    Raises:
        ValidationError: not a plausible address.
    """
    if not isinstance(email, str) or not _EMAIL.match(email.strip()):
        raise ValidationError("email must be a valid address", field=field)
    local, _, domain = email.strip().rpartition("@")
    return f"{local}@{domain.lower()}"


def _org_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200:
        raise ValidationError("organization name must be 1 to 200 characters", field="name")
    return name.strip()


def _role(role: object) -> str:
    if role not in ROLES:
        raise ValidationError(f"role must be one of {list(ROLES)}", field="role")
    return str(role)


def _token() -> tuple[str, bytes]:
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).digest()


def _hash_token(token: object) -> bytes:
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise ValidationError("token is malformed", field="token")
    return hashlib.sha256(token.encode()).digest()


# ---------------------------------------------------------------- users


async def get_user(db: Database, user_id: UUID) -> User:
    """The user with this id.

    Raises:
        NotFoundError: no such user.
    """
    row = await db.fetchrow(
        "SELECT id, email, name, email_verified, created_at FROM users WHERE id = $1 AND disabled_at IS NULL",
        user_id,
    )
    if row is None:
        raise NotFoundError("no such user")
    return User(**dict(row))


async def user_memberships(db: Database, user_id: UUID) -> list[Membership]:
    """Every organization the user belongs to, oldest first."""
    rows = await db.fetch("SELECT * FROM bitnet_user_memberships($1)", user_id)
    return [Membership(Organization(r["org_id"], r["name"], r["plan"], r["created_at"]), r["role"]) for r in rows]


async def membership_role(db: Database, org_id: UUID, user_id: UUID) -> str | None:
    """The user's role in ``org_id``, or None if not a member."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        role: str | None = await tx.fetchval(
            "SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2", org_id, user_id
        )
    return role


async def authenticate_password(
    db: Database, throttle: LoginThrottle, *, email: object, password: object, ip: str
) -> UUID:
    """The id of the user with these credentials; rehashes the password if its parameters are old.

    Raises:
        AuthenticationError: unknown email, wrong password or disabled account: one message for all.
        ThrottledError: too many recent failures for this account or address.
    """
    address = email.strip().lower() if isinstance(email, str) else ""
    await throttle.check(address, ip)
    if not isinstance(password, str) or len(password) > passwords.MAX_LENGTH:
        password = ""
    row = await db.fetchrow(
        "SELECT id, password_hash FROM users WHERE lower(email) = $1 AND disabled_at IS NULL", address
    )
    stored = row["password_hash"] if row is not None else None
    if not await passwords.verify_password(stored, password) or row is None or stored is None:
        await throttle.failed(address, ip)
        raise AuthenticationError("invalid email or password")
    await throttle.succeeded(address)
    if passwords.needs_rehash(stored):
        await db.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            row["id"],
            await passwords.hash_password(password),
        )
    user_id: UUID = row["id"]
    return user_id


# ---------------------------------------------------------------- sign-up


async def signup_start(
    db: Database,
    mailer: EmailSender,
    *,
    email: object,
    password: object,
    org_name: object,
    name: object = "",
    link_base: str,
) -> None:
    """Begin a sign-up: mail a verification link, or a note if the address already has an account.

    The caller answers the same way in both cases, so sign-up never reveals whether an email is registered.

    Raises:
        ValidationError: a field is malformed (this reveals nothing about accounts).
    """
    address = normalize_email(email)
    passwords.check_policy(password)
    assert isinstance(password, str)
    org = _org_name(org_name)
    display = name.strip()[:200] if isinstance(name, str) else ""
    exists = await db.fetchval("SELECT 1 FROM users WHERE lower(email) = lower($1)", address)
    if exists:
        await mailer.send(
            EmailMessage(
                address,
                "Sign-up attempt",
                "Someone tried to sign up with this address, which already has an account. "
                "If it was you, sign in instead (or reset your password).",
            )
        )
        return
    token, token_hash = _token()
    payload = {"password_hash": await passwords.hash_password(password), "org_name": org, "name": display}
    await db.execute(
        "INSERT INTO email_tokens (token_hash, purpose, email, payload, expires_at) VALUES ($1, 'signup', $2, $3, $4)",
        token_hash,
        address,
        payload,
        datetime.now(UTC) + SIGNUP_TTL,
    )
    await mailer.send(
        EmailMessage(
            address,
            "Confirm your bitnet-actor account",
            f"Confirm your address to finish signing up: {link_base}?token={token}\nThe link works once, for 24 hours.",
        )
    )


async def _use_email_token(conn: Connection, token: object, purpose: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "UPDATE email_tokens SET used_at = now() WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL"
        " AND expires_at > now() RETURNING email, payload",
        _hash_token(token),
        purpose,
    )
    if row is None:
        raise AuthenticationError("the link is invalid, used or expired")
    return {"email": row["email"], **row["payload"]}


async def signup_verify(db: Database, *, token: object, actor: audit.Actor) -> tuple[UUID, UUID]:
    """Finish a sign-up: create the verified user, their organization and the owner membership.

    Returns:
        (user id, organization id).

    Raises:
        AuthenticationError: the token is unknown, used or expired.
    """
    org_id = uuid4()
    async with db.transaction(org_id=org_id) as tx:
        data = await _use_email_token(tx, token, "signup")
        try:
            user_id: UUID = await tx.fetchval(
                "INSERT INTO users (email, name, password_hash, email_verified) VALUES ($1, $2, $3, true) RETURNING id",
                data["email"],
                data.get("name", ""),
                data["password_hash"],
            )
        except ConflictError:
            raise AuthenticationError("the link is invalid, used or expired") from None
        await _insert_org(
            tx,
            org_id,
            data["org_name"],
            user_id,
            audit.Actor(user_id=user_id, ip=actor.ip, user_agent=actor.user_agent),
        )
    return user_id, org_id


async def set_password_with_token(db: Database, *, token: object, password: object) -> UUID:
    """Set a password from a one-time link (admin-created accounts, resets); verifies the email too.

    Raises:
        AuthenticationError: the token is unknown, used or expired.
        ValidationError: the password breaks the policy.
    """
    passwords.check_policy(password)
    assert isinstance(password, str)
    hashed = await passwords.hash_password(password)
    async with db.transaction() as tx:
        data = await _use_email_token(tx, token, "password_set")
        user_id: UUID | None = await tx.fetchval(
            "UPDATE users SET password_hash = $2, email_verified = true WHERE lower(email) = lower($1) RETURNING id",
            data["email"],
            hashed,
        )
    if user_id is None:
        raise AuthenticationError("the link is invalid, used or expired")
    return user_id


async def issue_password_set_token(db: Database, email: str) -> str:
    """A one-time token to set the password of ``email`` (admin CLI)."""
    token, token_hash = _token()
    await db.execute(
        "INSERT INTO email_tokens (token_hash, purpose, email, expires_at) VALUES ($1, 'password_set', $2, $3)",
        token_hash,
        email,
        datetime.now(UTC) + PASSWORD_SET_TTL,
    )
    return token


# ---------------------------------------------------------------- organizations


async def _insert_org(conn: Connection, org_id: UUID, name: str, owner: UUID, actor: audit.Actor) -> None:
    try:
        await conn.execute("INSERT INTO organizations (id, name) VALUES ($1, $2)", org_id, name)
    except ConflictError:
        raise ConflictStateError("an organization with that name already exists") from None
    await conn.execute("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'owner')", org_id, owner)
    await audit.record(
        conn,
        org_id=org_id,
        actor=actor,
        action="org.created",
        target_type="org",
        target_id=org_id,
        details={"name": name},
    )


async def create_org(db: Database, *, name: object, owner: UUID, actor: audit.Actor) -> Organization:
    """Create an organization with ``owner`` as its first owner.

    Raises:
        ValidationError: bad name. ConflictStateError: the name is taken.
    """
    org_id = uuid4()
    checked = _org_name(name)
    async with db.transaction(org_id=org_id) as tx:
        await _insert_org(tx, org_id, checked, owner, actor)
    return await get_org(db, org_id)


async def admin_create_org(db: Database, *, name: str, owner_email: str) -> tuple[Organization, UUID, str | None]:
    """Operator path: create an organization and, if needed, its owner's account.

    Returns:
        (organization, owner user id, a one-time password-set token if the user is new or has no password).
    """
    address = normalize_email(owner_email, field="owner_email")
    async with db.transaction() as tx:
        row = await tx.fetchrow("SELECT id, password_hash FROM users WHERE lower(email) = lower($1)", address)
        if row is None:
            user_id: UUID = await tx.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", address)
            needs_password = True
        else:
            user_id, needs_password = row["id"], row["password_hash"] is None
    org = await create_org(db, name=name, owner=user_id, actor=audit.SYSTEM_ACTOR)
    token = await issue_password_set_token(db, address) if needs_password else None
    return org, user_id, token


async def get_org(db: Database, org_id: UUID) -> Organization:
    """The organization (visible only inside its own tenancy).

    Raises:
        NotFoundError: no such organization.
    """
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow("SELECT id, name, plan, created_at FROM organizations WHERE id = $1", org_id)
    if row is None:
        raise NotFoundError("no such organization")
    return Organization(**dict(row))


async def org_id_by_name(db: Database, name: str) -> UUID:
    """The id of the organization called ``name`` (operators address organizations by name).

    Raises:
        NotFoundError: none has that name.
    """
    org_id: UUID | None = await db.fetchval("SELECT bitnet_org_by_name($1)", name)
    if org_id is None:
        raise NotFoundError(f"no organization named {name!r}")
    return org_id


async def update_org(db: Database, org_id: UUID, *, name: object, actor: audit.Actor) -> Organization:
    """Rename an organization."""
    checked = _org_name(name)
    async with db.transaction(org_id=org_id) as tx:
        try:
            await tx.execute("UPDATE organizations SET name = $2 WHERE id = $1", org_id, checked)
        except ConflictError:
            raise ConflictStateError("an organization with that name already exists") from None
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="org.updated",
            target_type="org",
            target_id=org_id,
            details={"name": checked},
        )
    return await get_org(db, org_id)


# ---------------------------------------------------------------- members


async def list_members(db: Database, org_id: UUID) -> list[Member]:
    """The members of ``org_id``."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        rows = await tx.fetch(
            "SELECT m.user_id, u.email, u.name, m.role, m.created_at AS joined_at FROM memberships m"
            " JOIN users u ON u.id = m.user_id ORDER BY m.created_at"
        )
    return [Member(**dict(r)) for r in rows]


async def _lock_owners(conn: Connection, org_id: UUID) -> set[UUID]:
    rows = await conn.fetch("SELECT user_id FROM memberships WHERE org_id = $1 AND role = 'owner' FOR UPDATE", org_id)
    return {r["user_id"] for r in rows}


async def change_role(
    db: Database, org_id: UUID, user_id: UUID, *, role: object, actor_role: str, actor: audit.Actor
) -> Member:
    """Give a member another role.

    Raises:
        NotFoundError: not a member. PermissionDeniedError: the owner role needs an owner.
        ConflictStateError: it would leave the organization without an owner.
    """
    new_role = _role(role)
    async with db.transaction(org_id=org_id) as tx:
        owners = await _lock_owners(tx, org_id)
        current = await tx.fetchval("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2", org_id, user_id)
        if current is None:
            raise NotFoundError("no such member")
        if "owner" in (current, new_role) and not role_allows(actor_role, "owners:manage"):
            raise PermissionDeniedError("only an owner can grant or change the owner role")
        if current == "owner" and new_role != "owner" and owners == {user_id}:
            raise ConflictStateError("an organization must keep at least one owner")
        await tx.execute(
            "UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2", org_id, user_id, new_role
        )
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="member.role_changed",
            target_type="user",
            target_id=user_id,
            details={"from": current, "to": new_role},
        )
    return next(m for m in await list_members(db, org_id) if m.user_id == user_id)


async def remove_member(db: Database, org_id: UUID, user_id: UUID, *, actor_role: str, actor: audit.Actor) -> None:
    """Remove a member (members may remove themselves).

    Raises:
        NotFoundError: not a member. PermissionDeniedError: removing an owner needs an owner.
        ConflictStateError: the last owner cannot leave.
    """
    async with db.transaction(org_id=org_id) as tx:
        owners = await _lock_owners(tx, org_id)
        current = await tx.fetchval("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2", org_id, user_id)
        if current is None:
            raise NotFoundError("no such member")
        if current == "owner" and actor.user_id != user_id and not role_allows(actor_role, "owners:manage"):
            raise PermissionDeniedError("only an owner can remove an owner")
        if current == "owner" and owners == {user_id}:
            raise ConflictStateError("an organization must keep at least one owner")
        await tx.execute("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2", org_id, user_id)
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="member.removed",
            target_type="user",
            target_id=user_id,
            details={"role": current},
        )


# ---------------------------------------------------------------- invitations


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
