"""Organizations and their members: creating, finding and renaming organizations; listing members, changing
their roles and removing them (an organization always keeps an owner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID, uuid4

from bitnet_actor.errors import ConflictError
from bitnet_actor.services import audit
from bitnet_actor.services.errors import (
    ConflictStateError,
    NotFoundError,
    PermissionDeniedError,
)
from bitnet_actor.services.permissions import role_allows
from bitnet_actor.services.tenancy._accounts import issue_password_set_token
from bitnet_actor.services.tenancy._common import (
    Member,
    Organization,
    _insert_org,
    _org_name,
    _role,
    normalize_email,
)

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = [
    "admin_create_org",
    "change_role",
    "create_org",
    "get_org",
    "list_members",
    "org_id_by_name",
    "remove_member",
    "update_org",
]


async def create_org(
    db: Database, *, name: object, owner: UUID, actor: audit.Actor, region: str = "default"
) -> Organization:
    """Create an organization with ``owner`` as its first owner, at home in ``region`` (the creating
    replica's; only an operator moves it: ``bitnet-actor admin set-region``).

    Raises:
        ValidationError: bad name. ConflictStateError: the name is taken.
    """
    org_id = uuid4()
    checked = _org_name(name)
    async with db.transaction(org_id=org_id) as tx:
        await _insert_org(tx, org_id, checked, owner, actor, region)
    return await get_org(db, org_id)


async def admin_create_org(
    db: Database, *, name: str, owner_email: str, region: str = "default"
) -> tuple[Organization, UUID, str | None]:
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
    org = await create_org(db, name=name, owner=user_id, actor=audit.SYSTEM_ACTOR, region=region)
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
