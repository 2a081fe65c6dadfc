"""Customers' models: the registry (versions, aliases, lineage), uploads, archives and inspection, local
copies, jobs, routes, and encryption at rest (``crypto``: the chunked AES-256-GCM format; ``keys``: master keys,
wrapped data keys in PostgreSQL, rotation and crypto-shredding; ``encrypted``: :class:`EncryptedObjects`, the
service API over the object store)."""

from __future__ import annotations

from bitnet_actor.services.models.crypto import ObjectIntegrityError
from bitnet_actor.services.models.encrypted import EncryptedObject, EncryptedObjects, PlaintextStream
from bitnet_actor.services.models.keys import (
    DataKey,
    DataKeyDestroyedError,
    DataKeyNotFoundError,
    KeyProvider,
    LocalKeyProvider,
    MasterKeyError,
    RotationReport,
)

__all__ = [
    "DataKey",
    "DataKeyDestroyedError",
    "DataKeyNotFoundError",
    "EncryptedObject",
    "EncryptedObjects",
    "KeyProvider",
    "LocalKeyProvider",
    "MasterKeyError",
    "ObjectIntegrityError",
    "PlaintextStream",
    "RotationReport",
]
