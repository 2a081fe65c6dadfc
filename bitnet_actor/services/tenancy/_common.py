"""What the tenancy modules share: the records (:class:`User`, :class:`Organization`, ...), input checks,
email-token helpers and their lifetimes, and inserting an organization with its first owner.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bitnet_actor.errors import ConflictError
from bitnet_actor.services import audit
from bitnet_actor.services.errors import (
    ConflictStateError,
    ValidationError,
)
from bitnet_actor.services.permissions import ROLES

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.stores.postgres import Connection

__all__ = [
    "INVITE_TTL",
    "PASSWORD_SET_TTL",
    "SIGNUP_TTL",
    "Member",
    "Membership",
    "Organization",
    "User",
    "normalize_email",
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


async def _insert_org(
    conn: Connection, org_id: UUID, name: str, owner: UUID, actor: audit.Actor, region: str = "default"
) -> None:
    try:
        await conn.execute("INSERT INTO organizations (id, name, region) VALUES ($1, $2, $3)", org_id, name, region)
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
        details={"name": name, "region": region},
    )
