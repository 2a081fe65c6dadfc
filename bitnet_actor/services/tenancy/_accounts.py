"""Users and sign-up: looking users up, password sign-in, sign-up by email link, password-set links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from bitnet_actor.errors import ConflictError
from bitnet_actor.services import audit, passwords
from bitnet_actor.services.email import EmailMessage
from bitnet_actor.services.errors import (
    AuthenticationError,
    NotFoundError,
)
from bitnet_actor.services.tenancy._common import (
    PASSWORD_SET_TTL,
    SIGNUP_TTL,
    Membership,
    Organization,
    User,
    _hash_token,
    _insert_org,
    _org_name,
    _token,
    normalize_email,
)

if TYPE_CHECKING:
    from bitnet_actor.services.email import EmailSender
    from bitnet_actor.services.throttle import LoginThrottle
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = [
    "authenticate_password",
    "get_user",
    "issue_password_set_token",
    "membership_role",
    "request_password_reset",
    "set_password_with_token",
    "signup_start",
    "signup_verify",
    "user_memberships",
]


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


async def signup_verify(
    db: Database, *, token: object, actor: audit.Actor, region: str = "default"
) -> tuple[UUID, UUID]:
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
            region,
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


async def request_password_reset(db: Database, mailer: EmailSender, *, email: object, link_base: str) -> None:
    """Mail a one-time link to set a new password, if ``email`` has an active account.

    The caller answers the same way whether or not it has one, so the form never reveals who is registered;
    the link (``link_base?token=...``) is the same kind ``set_password_with_token`` takes, for 24 hours.

    Raises:
        ValidationError: ``email`` is not a plausible address (this reveals nothing about accounts).
    """
    address = normalize_email(email)
    found = await db.fetchval("SELECT email FROM users WHERE lower(email) = lower($1) AND disabled_at IS NULL", address)
    if found is None:
        return
    token = await issue_password_set_token(db, found)
    await mailer.send(
        EmailMessage(
            found,
            "Reset your bitnet-actor password",
            f"Set a new password: {link_base}?token={token}\nThe link works once, for 24 hours. "
            "If you did not ask for it, ignore this message: your password stays as it is.",
        )
    )
