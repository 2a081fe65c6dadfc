"""Errors raised by bitnet_actor.

The tree::

    BitnetError                       everything we raise on purpose; ``str(err)`` is one line for a person
    ├── ConfigError                   bad settings or flags (exit 2 on the CLI)
    ├── StoreError                    a storage backend failed
    │   ├── StoreUnavailableError     PostgreSQL / Redis / object store unreachable or refusing us
    │   ├── MigrationError            a migration failed, or the applied history does not match the files
    │   ├── ConflictError             a unique / foreign-key / check constraint rejected a write
    │   ├── QueryError                the database rejected a query for another reason
    │   └── ObjectNotFoundError       no object with that key in the object store
    ├── StartupError                  the service could not start (port in use, data dir unusable, ...)
    ├── ServiceError                  a domain rule refused (bitnet_actor/services/errors.py draws it)
    ├── EngineError                   model loading and generation (bitnet_actor/engine/errors.py)
    ├── ActorError                    an actor could not do what was asked (actors/errors.py)
    └── InvalidTokenError, KeyDecryptionError, OidcError, SamlError, TokenizerError   (their services' modules),
        ObjectIntegrityError, MasterKeyError, DataKeyNotFoundError, DataKeyDestroyedError
                                      (encrypted model objects: bitnet_actor/services/models/)

Outside it on purpose: ``ApiError`` (bitnet_actor/api/errors.py) is the HTTP boundary's answer, not a failure
of ours, and the kernels' ``OpenCLError`` tree (kernels import nothing of ours) is mapped to ``DeviceError``
where the engine opens a device.

Foreign errors (asyncpg, redis, botocore, OSError) are mapped to these at the store boundary, so layers above
never catch a driver's exception type.
"""

from __future__ import annotations

__all__ = [
    "BitnetError",
    "ConfigError",
    "ConflictError",
    "MigrationError",
    "ObjectNotFoundError",
    "QueryError",
    "StartupError",
    "StoreError",
    "StoreUnavailableError",
]


class BitnetError(Exception):
    """Base of every error bitnet_actor raises on purpose."""


class ConfigError(BitnetError):
    """A setting or flag has a bad value."""


class StoreError(BitnetError):
    """A storage backend failed."""


class StoreUnavailableError(StoreError):
    """A storage backend cannot be reached or refused the connection."""


class MigrationError(StoreError):
    """A schema migration failed or the applied history does not match the migration files."""


class ConflictError(StoreError):
    """A write broke a constraint (unique, foreign key, check); ``constraint`` names it when known."""

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class QueryError(StoreError):
    """The database rejected a query (syntax, types, permissions)."""


class ObjectNotFoundError(StoreError, KeyError):
    """The object store has no object under the requested key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class StartupError(BitnetError):
    """The service could not start."""
