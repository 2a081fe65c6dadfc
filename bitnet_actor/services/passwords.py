"""Passwords: Argon2id (OWASP's minimum: m=19 MiB, t=2, p=1), length rules, rehash on login.

Hashing takes tens of milliseconds of CPU on purpose, so the async helpers run it in a worker thread.
"""

from __future__ import annotations

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from bitnet_actor.services.errors import ValidationError

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "check_policy", "hash_password", "needs_rehash", "verify_password"]

MIN_LENGTH = 12
MAX_LENGTH = 256  # bounds the hashing work an attacker can ask for

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16)
# Verified against when the account does not exist, so both paths cost the same time.
_DUMMY = _HASHER.hash("timing-equalizer-not-a-password")
_limit = trio.CapacityLimiter(2)  # at most two hashes at once: ~40 MiB, and logins can't starve the CPU


def check_policy(password: object, *, field: str = "password") -> str:
    """Return ``password`` if it meets the policy (NIST / OWASP: length only, no composition rules).

    Raises:
        ValidationError: not a string, shorter than 12 or longer than 256 characters.
    """
    if not isinstance(password, str):
        raise ValidationError("password must be a string", field=field)
    if len(password) < MIN_LENGTH:
        raise ValidationError(f"password must be at least {MIN_LENGTH} characters long", field=field)
    if len(password) > MAX_LENGTH:
        raise ValidationError(f"password must be at most {MAX_LENGTH} characters long", field=field)
    return password


async def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` (PHC string with its parameters and salt)."""
    return await trio.to_thread.run_sync(_HASHER.hash, password, limiter=_limit)


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored``; ``stored=None`` (no such account) costs the same and fails."""

    def verify() -> bool:
        try:
            _HASHER.verify(stored or _DUMMY, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored is not None

    return await trio.to_thread.run_sync(verify, limiter=_limit)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's (rehash it at the next login)."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
