"""Object keys (``sha256/<hex>``), :class:`ObjectInfo`, and the HMAC signatures of filesystem presigned URLs."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

__all__ = ["ObjectInfo", "key_for_digest", "sign_presigned", "validate_key", "verify_presigned"]

_KEY_RE = re.compile(r"sha256/([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store knows about one object.

    Attributes:
        key: The object's key, ``sha256/<hex>``.
        sha256: The lowercase hex SHA-256 of the content (the last part of ``key``).
        size: The content length in bytes.
    """

    key: str
    sha256: str
    size: int


def validate_key(key: object) -> str:
    """Check that ``key`` is a well-formed object key and return its hex digest.

    Args:
        key: The candidate key.

    Returns:
        The 64-character lowercase hex digest part of the key.

    Raises:
        ValueError: ``key`` is not exactly ``sha256/<64 lowercase hex digits>``.
    """
    if not isinstance(key, str):
        raise ValueError(f"object key must be a str, not {type(key).__name__}")
    match = _KEY_RE.fullmatch(key)
    if match is None:
        raise ValueError(f"invalid object key {key[:100]!r}: expected 'sha256/<64 lowercase hex digits>'")
    return match.group(1)


def key_for_digest(sha256_hex: str) -> str:
    """Return the object key for a lowercase hex SHA-256 digest.

    Args:
        sha256_hex: 64 lowercase hex digits.

    Returns:
        ``sha256/<sha256_hex>``.

    Raises:
        ValueError: ``sha256_hex`` is not 64 lowercase hex digits.
    """
    key = f"sha256/{sha256_hex}"
    validate_key(key)
    return key


def _presign_message(key: str, expires: int) -> bytes:
    return f"{key}\n{expires}".encode("ascii")


def sign_presigned(signing_key: bytes, key: str, expires: int) -> str:
    """Compute the signature of a filesystem-store presigned URL.

    The signature is ``hex(HMAC-SHA256(signing_key, f"{key}\\n{expires}"))``.

    Args:
        signing_key: The secret shared by the store and the HTTP layer.
        key: A valid object key.
        expires: Unix time (seconds) after which the URL is no longer valid.

    Returns:
        The lowercase hex signature.

    Raises:
        ValueError: ``key`` is not a valid object key.
    """
    validate_key(key)
    return hmac.new(signing_key, _presign_message(key, expires), hashlib.sha256).hexdigest()


def verify_presigned(signing_key: bytes, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
    """Check a presigned URL made by :meth:`FilesystemObjectStore.presigned_url`.

    The comparison is constant-time. Malformed input (bad key, non-hex signature) is rejected, never raised.

    Args:
        signing_key: The secret the store signed with.
        key: The object key taken from the URL path.
        expires: The ``expires`` query parameter (Unix seconds).
        signature: The ``signature`` query parameter (hex).
        now: The current Unix time; defaults to :func:`time.time`.

    Returns:
        True when the signature matches ``key`` and ``expires`` and the URL has not expired.
    """
    try:
        validate_key(key)
        given = bytes.fromhex(signature)
    except (ValueError, TypeError):
        return False
    if isinstance(expires, bool) or not isinstance(expires, int):
        return False
    expected = hmac.new(signing_key, _presign_message(key, expires), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        return False
    current = time.time() if now is None else now
    return current <= expires
