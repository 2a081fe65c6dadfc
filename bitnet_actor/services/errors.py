"""Errors of the domain services.

The tree::

    ServiceError (BitnetError)      a domain rule refused the operation; ``str(err)`` is safe to show
    ├── NotFoundError               no such object *for this tenant* (also what a foreign tenant's object looks like)
    ├── PermissionDeniedError       the caller's role or the key's scopes do not allow it
    ├── AuthenticationError         missing, malformed, revoked or expired credentials
    ├── ConflictStateError          the operation contradicts current state (last owner, already accepted, ...)
    ├── ValidationError             a field has a bad value; ``field`` names it
    ├── ThrottledError              too many attempts; ``retry_after`` seconds
    └── PaymentProviderError        Stripe refused a call or could not be reached; ``retryable`` says which
"""

from __future__ import annotations

from bitnet_actor.errors import BitnetError

__all__ = [
    "AuthenticationError",
    "ConflictStateError",
    "NotFoundError",
    "PaymentProviderError",
    "PermissionDeniedError",
    "ServiceError",
    "ThrottledError",
    "ValidationError",
]


class ServiceError(BitnetError):
    """A domain rule refused the operation."""


class NotFoundError(ServiceError):
    """No such object for this tenant."""


class PermissionDeniedError(ServiceError):
    """The caller may not do this."""


class AuthenticationError(ServiceError):
    """Credentials are missing, malformed, revoked or expired."""


class ConflictStateError(ServiceError):
    """The operation contradicts the current state."""


class ValidationError(ServiceError):
    """A field has a bad value."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ThrottledError(ServiceError):
    """Too many attempts; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PaymentProviderError(ServiceError):
    """Stripe refused a call (``retryable`` False: the same call would be refused again) or could not be
    reached, was rate limited or failed on its side (``retryable`` True: retry later with the same
    idempotency key).

    Attributes:
        retryable: whether the same call may succeed later.
        status: the HTTP status Stripe answered (None: no answer).
        code: Stripe's error code, if any.
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
