"""``Handles``: everything the web layer may touch, built by ``bitnet_actor.system`` and given to ``create_app``.

The web layer (``bitnet_actor.api``, ``portal``) imports this module, message types and services; never the
composition root, never an actor class. Each field is typed by a protocol naming only what the web layer
calls, so a handle's implementation (an actor today, a client of another process tomorrow) can change
behind it:

- ``inference``: model leases and generation requests (:class:`actors.inference.Inference`);
- ``models``: which models exist and which are loaded (the model registry of [H] goes behind it);
- ``tenants``: an organization's admission (its plan's limits, its requests in flight);
- ``auth``: the authentication services; ``stores``: the storage adapters; ``settings``; ``metrics``;
- ``usage``: the usage ledger's writer; ``readiness``: what ``/readyz`` waits for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from uuid import UUID

    from actors.inference import Generate
    from actors.model_cache import Lease
    from actors.scheduler import Event
    from bitnet_actor.config import Settings
    from bitnet_actor.observability import Metrics
    from bitnet_actor.services.authn import AuthServices
    from bitnet_actor.services.plans import PlanLimits
    from bitnet_actor.services.usage import UsageEntry
    from bitnet_actor.stores.objects import ObjectStore
    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = [
    "Handles",
    "InferenceHandle",
    "LocalObjectServer",
    "ModelsHandle",
    "Readiness",
    "StoresHandle",
    "TenantsHandle",
    "UsageHandle",
]


class InferenceHandle(Protocol):
    """Model leases and generation requests."""

    def lease(self, name: str) -> AbstractAsyncContextManager[Lease]:
        """The loaded model ``name`` for a block (raises the model cache's errors on entry)."""
        ...

    def submit_nowait(self, lease: Lease, generate: Generate) -> trio.MemoryReceiveChannel[Event]:
        """Queue a generation; the caller owns the returned reply channel (``trio.WouldBlock``: queue full)."""
        ...


class ModelsHandle(Protocol):
    """What models exist."""

    def model_names(self) -> list[str]:
        """The models that can be leased."""
        ...

    def loaded(self) -> set[str]:
        """The models loaded now."""
        ...


class TenantsHandle(Protocol):
    """Organizations while their requests run."""

    def admit(self, org_id: UUID) -> AbstractAsyncContextManager[PlanLimits]:
        """Hold one request of ``org_id`` in flight for a block; yields its plan's limits."""
        ...


class UsageHandle(Protocol):
    """The usage ledger."""

    async def record(self, entry: UsageEntry) -> None:
        """Record ``entry`` durably (retried, spooled on failure; never silently dropped)."""
        ...


class StoresHandle(Protocol):
    """The storage adapters."""

    @property
    def db(self) -> Database:
        """PostgreSQL."""
        ...

    @property
    def redis(self) -> RedisStore:
        """Redis."""
        ...

    @property
    def objects(self) -> ObjectStore:
        """The object store."""
        ...


@runtime_checkable
class LocalObjectServer(Protocol):
    """An object store whose presigned URLs this service answers itself (the filesystem store)."""

    def verify_url(self, key: str, expires: int, signature: str) -> bool:
        """Whether a presigned URL's signature is valid and unexpired."""
        ...

    def open_stream(self, key: str) -> Any:
        """An async-iterable stream of the object (an async context manager)."""
        ...


@dataclass(slots=True)
class Readiness:
    """What ``/readyz`` reports besides the stores: models still loading, and a shutdown under way."""

    warming: set[str] = field(default_factory=set)
    """Platform models whose first load at start is still running."""
    draining: trio.Event = field(default_factory=trio.Event)
    """Set when a graceful shutdown starts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Handles:
    """The running system as the web layer sees it (see the module docstring)."""

    settings: Settings
    stores: StoresHandle
    metrics: Metrics
    auth: AuthServices
    inference: InferenceHandle
    models: ModelsHandle
    tenants: TenantsHandle
    usage: UsageHandle
    readiness: Readiness = field(default_factory=Readiness)
