"""Download links for model versions: short-lived signed URLs the service itself answers.

A member with ``models:read`` asks for a link to one of the organization's versions; the link is a bearer
capability (no other authentication, so ``curl`` or a plain ``wget`` can use it) that names the organization,
the version and an expiry, signed with HMAC-SHA256 under a key derived from the service's secret key. It
stops working when it expires, when the version is deleted, or when the organization's keys are shredded.

Why the service and not the object store's own presigned URLs: every stored model object is encrypted with
its own data key (:mod:`.encrypted`), so an S3 presigned URL would hand out ciphertext. The download is
decrypted (and authenticated chunk by chunk) on the way out, so a tampered object ends the transfer rather
than delivering altered bytes.

Token format: ``<org id hex>.<version id hex>.<expires unix>.<base64url HMAC>`` (ids without dashes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitnet_actor.services.errors import NotFoundError, PermissionDeniedError, ValidationError
from bitnet_actor.services.models import registry

if TYPE_CHECKING:
    from bitnet_actor.stores.postgres import Database

__all__ = [
    "DEFAULT_EXPIRES_S",
    "MAX_EXPIRES_S",
    "Download",
    "DownloadLink",
    "link_key",
    "make_link",
    "open_link",
]

DEFAULT_EXPIRES_S = 900
MAX_EXPIRES_S = 24 * 3600
_PURPOSE = b"bitnet-actor model download links v1"
_EXTENSIONS = {"gguf": ".gguf", "tar": ".tar", "tar.gz": ".tar.gz", "zip": ".zip"}


def link_key(secret_key: bytes) -> bytes:
    """The signing key of download links, derived from the service's secret key (one purpose, one key)."""
    return hmac.new(secret_key, _PURPOSE, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class DownloadLink:
    """A signed link's token and when it expires."""

    token: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Download:
    """What a valid link opens: the version's stored object and how to name it."""

    org_id: uuid.UUID
    version: registry.ModelVersion
    object_key: str
    size: int
    format: str

    @property
    def filename(self) -> str:
        """``<name>-<version><extension>`` (names and versions are ``[A-Za-z0-9._-]``: safe in a header)."""
        return f"{self.version.name}-{self.version.version}{_EXTENSIONS.get(self.format, '')}"


def _sign(key: bytes, org_id: uuid.UUID, version_id: uuid.UUID, expires: int) -> str:
    message = f"{org_id.hex}.{version_id.hex}.{expires}".encode()
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).rstrip(b"=").decode()


async def make_link(
    db: Database,
    key: bytes,
    org_id: uuid.UUID,
    name: str,
    version: str,
    *,
    expires_in: int = DEFAULT_EXPIRES_S,
    now: float | None = None,
) -> tuple[Download, DownloadLink]:
    """A link to ``name:version`` of ``org_id`` valid for ``expires_in`` seconds.

    Raises:
        ValidationError: ``expires_in`` outside 1 s .. :data:`MAX_EXPIRES_S`.
        NotFoundError: no such version of this organization, or one with no stored file (a platform model
            served from a replica's path, a version still pending).
    """
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_EXPIRES_S:
        raise ValidationError(f"expires_in must be 1 to {MAX_EXPIRES_S} seconds", field="expires_in")
    found = await registry.get_version(db, org_id, name, version)
    download = await _download(db, org_id, found)
    expires = int(now if now is not None else time.time()) + expires_in
    token = f"{org_id.hex}.{found.id.hex}.{expires}.{_sign(key, org_id, found.id, expires)}"
    return download, DownloadLink(token, expires)


async def open_link(db: Database, key: bytes, token: str, *, now: float | None = None) -> Download:
    """The download a link's token names, if its signature holds and it has not expired.

    Raises:
        PermissionDeniedError: a malformed, forged or expired token.
        NotFoundError: the version (or its file) is gone.
    """
    parts = token.split(".")
    try:
        if len(parts) != 4 or len(token) > 200:
            raise ValueError(token)
        org_id, version_id, expires = uuid.UUID(hex=parts[0]), uuid.UUID(hex=parts[1]), int(parts[2])
    except ValueError:
        raise PermissionDeniedError("the download link is invalid or has expired") from None
    expected = _sign(key, org_id, version_id, expires)
    if not hmac.compare_digest(expected.encode(), parts[3].encode()):
        raise PermissionDeniedError("the download link is invalid or has expired")
    if expires < (now if now is not None else time.time()):
        raise PermissionDeniedError("the download link is invalid or has expired")
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        row = await tx.fetchrow(
            "SELECT name, version FROM model_versions WHERE id = $1 AND org_id = $2", version_id, org_id
        )
    if row is None:
        raise NotFoundError("the model version of this link no longer exists")
    return await _download(db, org_id, await registry.get_version(db, org_id, row["name"], row["version"]))


async def _download(db: Database, org_id: uuid.UUID, version: registry.ModelVersion) -> Download:
    if version.org_id != org_id or version.blob_id is None or version.state not in ("ready", "deprecated"):
        raise NotFoundError(f"{version.ref} has no stored file to download")
    async with db.transaction(org_id=org_id, readonly=True) as tx:
        blob = await tx.fetchrow("SELECT object_key, bytes, format FROM model_blobs WHERE id = $1", version.blob_id)
    if blob is None:
        raise NotFoundError(f"{version.ref} has no stored file to download")
    return Download(org_id, version, blob["object_key"], blob["bytes"], blob["format"])
