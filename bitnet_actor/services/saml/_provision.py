"""Who a verified SAML identity signs in as: linking, just-in-time provisioning and membership.

In order, inside one transaction of the organization:

1. A (IdP, NameID) that signed in before (``saml_identities``; never for transient NameIDs) is its user.
2. Else the user with the asserted email, **only if already a member of this organization** (invited by its
   administrators, say). An IdP is trusted for its own organization's people; it must never be a way into an
   account that lives elsewhere: otherwise any organization's administrator could configure an IdP that
   asserts a stranger's email and sign in as them everywhere. Such accounts are refused
   (``account_exists``): an invitation first, single sign-on after.
3. Else a new user (no password, ``email_verified`` false: the IdP vouches for its organization, not for the
   address on the whole platform), provisioned just in time.

The user then gets a membership with the configuration's default role if they had none (an existing role is
kept), and the identity is linked. Audit: ``member.provisioned`` when a membership is created,
``sso.saml.login`` for every sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from bitnet_actor.errors import ConflictError
from bitnet_actor.services import audit
from bitnet_actor.services.saml._errors import SamlAccountError

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.services.saml._config import SamlConfig
    from bitnet_actor.services.saml._verify import VerifiedAssertion
    from bitnet_actor.stores.postgres import Connection, Database

__all__ = ["Provisioned", "provision"]

TRANSIENT: Final = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"


@dataclass(frozen=True, slots=True)
class Provisioned:
    """The outcome of :func:`provision`."""

    user_id: UUID
    created_user: bool  # a new account, provisioned just in time
    joined: bool  # a new membership of the organization, with the default role


async def provision(
    db: Database, config: SamlConfig, verified: VerifiedAssertion, *, email: str, name: str, actor: audit.Actor
) -> Provisioned:
    """Find or create the user of ``verified``, make them a member, record the sign-in.

    Args:
        db: the database.
        config: the organization's configuration (its default role).
        verified: the verified assertion.
        email: the email it asserts (normalized, within the allowed domains).
        name: the display name it asserts ("" if none).
        actor: where the sign-in comes from (the audit entries' IP and user agent).

    Raises:
        SamlAccountError: ``account_exists`` (an account of that email outside this organization) or
            ``account_disabled``.
    """
    for attempt in range(3):  # a concurrent sign-up or sign-in can win a race on the unique constraints
        try:
            return await _provision_once(db, config, verified, email=email, name=name, actor=actor)
        except ConflictError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _linked_user(tx: Connection, config: SamlConfig, verified: VerifiedAssertion, email: str) -> UUID | None:
    if verified.name_id_format == TRANSIENT:
        return None
    user_id: UUID | None = await tx.fetchval(
        "UPDATE saml_identities SET last_login_at = now(), email = $4"
        " WHERE org_id = $1 AND issuer = $2 AND name_id = $3 RETURNING user_id",
        config.org_id,
        verified.issuer,
        verified.name_id,
        email,
    )
    return user_id


async def _provision_once(
    db: Database, config: SamlConfig, verified: VerifiedAssertion, *, email: str, name: str, actor: audit.Actor
) -> Provisioned:
    org_id = config.org_id
    created = False
    async with db.transaction(org_id=org_id) as tx:
        user_id = await _linked_user(tx, config, verified, email)
        if user_id is None:
            row = await tx.fetchrow("SELECT id FROM users WHERE lower(email) = lower($1) FOR UPDATE", email)
            if row is None:
                user_id = await tx.fetchval(
                    "INSERT INTO users (email, name, email_verified) VALUES ($1, $2, false) RETURNING id",
                    email,
                    name[:200],
                )
                created = True
            else:
                user_id = row["id"]
                member = await tx.fetchval(
                    "SELECT 1 FROM memberships WHERE org_id = $1 AND user_id = $2", org_id, user_id
                )
                if member is None:
                    raise SamlAccountError(
                        "account_exists",
                        "an account with this email already exists outside this organization: ask an administrator"
                        " to invite it, then sign in with single sign-on",
                    )
        assert user_id is not None
        if await tx.fetchval("SELECT disabled_at IS NOT NULL FROM users WHERE id = $1", user_id):
            raise SamlAccountError("account_disabled", "this account is disabled")
        user_actor = audit.Actor(user_id=user_id, ip=actor.ip, user_agent=actor.user_agent)
        joined = await tx.fetchval(
            "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)"
            " ON CONFLICT (org_id, user_id) DO NOTHING RETURNING true",
            org_id,
            user_id,
            config.default_role,
        )
        if joined:
            await audit.record(
                tx,
                org_id=org_id,
                actor=user_actor,
                action="member.provisioned",
                target_type="user",
                target_id=user_id,
                details={"role": config.default_role, "via": "saml", "new_account": created},
            )
        if verified.name_id_format != TRANSIENT:
            await tx.execute(
                "INSERT INTO saml_identities (org_id, issuer, name_id, user_id, email) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (org_id, issuer, name_id) DO NOTHING",
                org_id,
                verified.issuer,
                verified.name_id,
                user_id,
                email,
            )
        await audit.record(
            tx,
            org_id=org_id,
            actor=user_actor,
            action="sso.saml.login",
            target_type="user",
            target_id=user_id,
            details={"email": email, "name_id": verified.name_id[:200], "assertion_id": verified.assertion_id[:200]},
        )
    return Provisioned(user_id=user_id, created_user=created, joined=bool(joined))
