"""An organization's SAML configuration: what it may hold (:class:`SamlConfigUpdate` checks every field),
and storing, reading and deleting it (``saml_configs``, migration 0011), each change audit-logged.

IdP certificates are PEM X.509 certificates with an RSA key of at least 2048 bits or an EC key on P-256,
P-384 or P-521. An expired certificate is accepted (IdPs commonly keep signing with long-expired self-signed
certificates, and metadata trust does not depend on the dates) but flagged in :class:`IdpCertificate`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bitnet_actor.services import audit
from bitnet_actor.services.errors import ValidationError
from bitnet_actor.services.permissions import ROLES

if TYPE_CHECKING:
    from collections.abc import Sequence
    from uuid import UUID

    from bitnet_actor.stores.postgres import Database

__all__ = [
    "DEFAULT_ROLES",
    "IdpCertificate",
    "SamlConfig",
    "SamlConfigUpdate",
    "delete_config",
    "get_config",
    "put_config",
]

DEFAULT_ROLES: Final = tuple(r for r in ROLES if r != "owner")  # single sign-on never makes owners
MAX_CERTIFICATES: Final = 4
MAX_DOMAINS: Final = 50
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
_EC_CURVES: Final = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_COLUMNS: Final = (
    "org_id, enabled, idp_entity_id, idp_sso_url, idp_certificates, email_attribute, name_attribute,"
    " allowed_email_domains, default_role, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class IdpCertificate:
    """One IdP signing certificate, as shown to administrators."""

    pem: str
    sha256_fingerprint: str  # hex, colon-separated, as IdP consoles show it
    subject: str
    not_valid_after: datetime

    @property
    def expired(self) -> bool:
        """Whether its validity period has ended (it still verifies: see the module docstring)."""
        return self.not_valid_after <= datetime.now(UTC)

    @property
    def der_base64(self) -> str:
        """The certificate as in SAML metadata's ``X509Certificate``: base64 DER, no PEM armour."""
        return "".join(line for line in self.pem.strip().splitlines() if not line.startswith("-----"))


@dataclass(frozen=True, slots=True, kw_only=True)
class SamlConfig:
    """An organization's identity provider and sign-in rules."""

    org_id: UUID
    enabled: bool
    idp_entity_id: str
    idp_sso_url: str
    idp_certificates: tuple[str, ...]  # normalized PEM
    email_attribute: str | None  # None: the NameID is the email
    name_attribute: str | None
    allowed_email_domains: tuple[str, ...]  # empty: any domain
    default_role: str
    created_at: datetime
    updated_at: datetime

    def certificates(self) -> list[IdpCertificate]:
        """The signing certificates, parsed."""
        return [_certificate(pem, field="idp_certificates") for pem in self.idp_certificates]

    def email_allowed(self, email: str) -> bool:
        """Whether ``email``'s domain is one of the allowed domains (any, when none are listed)."""
        if not self.allowed_email_domains:
            return True
        return email.rpartition("@")[2].lower() in self.allowed_email_domains


@dataclass(frozen=True, slots=True, kw_only=True)
class SamlConfigUpdate:
    """A whole configuration as an administrator sets it, checked and normalized by :meth:`check`."""

    enabled: bool
    idp_entity_id: str
    idp_sso_url: str
    idp_certificates: tuple[str, ...]
    email_attribute: str | None
    name_attribute: str | None
    allowed_email_domains: tuple[str, ...]
    default_role: str

    @classmethod
    def check(
        cls,
        *,
        idp_entity_id: object,
        idp_sso_url: object,
        idp_certificates: object,
        enabled: object = True,
        email_attribute: object = None,
        name_attribute: object = None,
        allowed_email_domains: object = (),
        default_role: object = "member",
    ) -> SamlConfigUpdate:
        """Check and normalize every field.

        Raises:
            ValidationError: a field is malformed; ``field`` names it.
        """
        if not isinstance(enabled, bool):
            raise ValidationError("enabled must be true or false", field="enabled")
        if not isinstance(idp_certificates, (list, tuple)) or not 1 <= len(idp_certificates) <= MAX_CERTIFICATES:
            raise ValidationError(f"give 1 to {MAX_CERTIFICATES} IdP certificates (PEM)", field="idp_certificates")
        certs = [_certificate(pem, field="idp_certificates").pem for pem in idp_certificates]
        if len(set(certs)) != len(certs):
            raise ValidationError("a certificate is listed twice", field="idp_certificates")
        if default_role not in DEFAULT_ROLES:
            raise ValidationError(f"default_role must be one of {list(DEFAULT_ROLES)}", field="default_role")
        return cls(
            enabled=enabled,
            idp_entity_id=_entity_id(idp_entity_id),
            idp_sso_url=_sso_url(idp_sso_url),
            idp_certificates=tuple(certs),
            email_attribute=_attribute(email_attribute, field="email_attribute"),
            name_attribute=_attribute(name_attribute, field="name_attribute"),
            allowed_email_domains=_domains(allowed_email_domains),
            default_role=str(default_role),
        )


def _entity_id(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 1024
        or any(c.isspace() or ord(c) < 0x20 for c in value)
        or not urlsplit(value).scheme  # a URI: https://idp.example.com/metadata, urn:...
    ):
        raise ValidationError("idp_entity_id must be the IdP's entity id (a URI, no spaces)", field="idp_entity_id")
    return value


def _sso_url(value: object) -> str:
    message = "idp_sso_url must be an https URL (http only on loopback) without a fragment"
    if not isinstance(value, str) or len(value) > 2048 or any(c.isspace() or ord(c) < 0x20 for c in value):
        raise ValidationError(message, field="idp_sso_url")
    parts = urlsplit(value)
    if parts.fragment or not parts.hostname or parts.scheme not in ("https", "http"):
        raise ValidationError(message, field="idp_sso_url")
    if parts.scheme == "http" and parts.hostname != "localhost":
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValidationError(message, field="idp_sso_url")
    return value


def _attribute(value: object, *, field: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 256
        or value != value.strip()
        or any(ord(c) < 0x20 for c in value)
    ):
        raise ValidationError(f"{field} must be an attribute name of 1 to 256 characters", field=field)
    return value


def _domains(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_DOMAINS:
        raise ValidationError(f"allowed_email_domains must be a list of at most {MAX_DOMAINS} domains",
                              field="allowed_email_domains")  # fmt: skip
    out: list[str] = []
    for item in value:
        domain = item.strip().lower().rstrip(".") if isinstance(item, str) else ""
        if not _DOMAIN.match(domain):
            raise ValidationError(
                f"{item!r} is not a domain name (write internationalized names in punycode)",
                field="allowed_email_domains",
            )
        if domain not in out:
            out.append(domain)
    return tuple(out)


def _certificate(pem: object, *, field: str) -> IdpCertificate:
    if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem or len(pem) > 16384:
        raise ValidationError("each IdP certificate must be one PEM certificate (-----BEGIN CERTIFICATE-----)",
                              field=field)  # fmt: skip
    try:
        certs = x509.load_pem_x509_certificates(pem.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValidationError("an IdP certificate does not parse as a PEM X.509 certificate", field=field) from None
    if len(certs) != 1:
        raise ValidationError("give each IdP certificate as its own PEM string", field=field)
    cert = certs[0]
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValidationError("an IdP certificate's RSA key is shorter than 2048 bits", field=field)
    elif not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES)):
        raise ValidationError("an IdP certificate's key must be RSA or EC (P-256, P-384, P-521)", field=field)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return IdpCertificate(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        sha256_fingerprint=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
        subject=cert.subject.rfc4514_string(),
        not_valid_after=cert.not_valid_after_utc,
    )


def _from_row(row: Any) -> SamlConfig:
    return SamlConfig(
        org_id=row["org_id"],
        enabled=row["enabled"],
        idp_entity_id=row["idp_entity_id"],
        idp_sso_url=row["idp_sso_url"],
        idp_certificates=tuple(row["idp_certificates"]),
        email_attribute=row["email_attribute"],
        name_attribute=row["name_attribute"],
        allowed_email_domains=tuple(row["allowed_email_domains"]),
        default_role=row["default_role"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def get_config(db: Database, org_id: UUID) -> SamlConfig | None:
    """The organization's SAML configuration, or None (none, or no such organization)."""
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM saml_configs WHERE org_id = $1", org_id)
    return None if row is None else _from_row(row)


def _summary(update: SamlConfigUpdate, fingerprints: Sequence[str]) -> dict[str, Any]:
    return {
        "enabled": update.enabled,
        "idp_entity_id": update.idp_entity_id,
        "idp_sso_url": update.idp_sso_url,
        "idp_certificates": list(fingerprints),
        "email_attribute": update.email_attribute,
        "name_attribute": update.name_attribute,
        "allowed_email_domains": list(update.allowed_email_domains),
        "default_role": update.default_role,
    }


async def put_config(db: Database, org_id: UUID, update: SamlConfigUpdate, *, actor: audit.Actor) -> SamlConfig:
    """Create or replace the organization's configuration (audit: ``sso.saml.created`` / ``sso.saml.updated``,
    with the certificates' fingerprints, never the certificates)."""
    fingerprints = [_certificate(pem, field="idp_certificates").sha256_fingerprint for pem in update.idp_certificates]
    async with db.transaction(org_id=org_id) as tx:
        existed = await tx.fetchval("SELECT 1 FROM saml_configs WHERE org_id = $1 FOR UPDATE", org_id)
        row = await tx.fetchrow(
            "INSERT INTO saml_configs (org_id, enabled, idp_entity_id, idp_sso_url, idp_certificates,"
            " email_attribute, name_attribute, allowed_email_domains, default_role)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (org_id) DO UPDATE SET enabled = $2, idp_entity_id = $3, idp_sso_url = $4,"
            " idp_certificates = $5, email_attribute = $6, name_attribute = $7, allowed_email_domains = $8,"
            f" default_role = $9, updated_at = now() RETURNING {_COLUMNS}",
            org_id,
            update.enabled,
            update.idp_entity_id,
            update.idp_sso_url,
            list(update.idp_certificates),
            update.email_attribute,
            update.name_attribute,
            list(update.allowed_email_domains),
            update.default_role,
        )
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="sso.saml.updated" if existed else "sso.saml.created",
            target_type="saml_config",
            target_id=org_id,
            details=_summary(update, fingerprints),
        )
    return _from_row(row)


async def delete_config(db: Database, org_id: UUID, *, actor: audit.Actor) -> bool:
    """Remove the organization's configuration (audit: ``sso.saml.deleted``); False if it had none.

    Links of IdP identities to users go too: a new IdP starts from the email rules again.
    """
    async with db.transaction(org_id=org_id) as tx:
        gone = await tx.fetchval("DELETE FROM saml_configs WHERE org_id = $1 RETURNING idp_entity_id", org_id)
        if gone is None:
            return False
        await tx.execute("DELETE FROM saml_identities WHERE org_id = $1", org_id)
        await audit.record(
            tx,
            org_id=org_id,
            actor=actor,
            action="sso.saml.deleted",
            target_type="saml_config",
            target_id=org_id,
            details={"idp_entity_id": gone},
        )
    return True
