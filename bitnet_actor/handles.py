"""``Handles``: everything the web layer may touch, built by ``bitnet_actor.system`` and given to ``create_app``.

The web layer (``bitnet_actor.api``, ``portal``) imports this module, message types and services; never the
composition root, never an actor class. Each field is typed by a protocol naming only what the web layer
calls, so a handle's implementation (an actor today, a client of another process tomorrow) can change
behind it:

- ``inference``: model leases and generation requests (:class:`actors.inference.Inference`);
- ``models``: which models exist and which are loaded (the model registry of [H] goes behind it);
- ``tenants``: an organization's admission (its plan's limits, its requests in flight);
- ``auth``: the authentication services; ``stores``: the storage adapters; ``settings``; ``metrics``;
- ``meter``: the usage meter (one event per request, never waits); ``limits``: rate limits and quotas;
- ``routes``: the A/B route cache (:class:`actors.route_cache.RouteCache`); ``readiness``: what ``/readyz``
  waits for;
- ``checkout``: Stripe Checkout and Billing Portal sessions
  (:class:`bitnet_actor.services.billing.checkout.StripeCheckout`), None without a Stripe key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from bitnet_actor.tracing import Tracing

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager
    from uuid import UUID

    from actors.inference import Generate
    from actors.model_cache import Lease
    from actors.scheduler import Event
    from bitnet_actor.config import Settings
    from bitnet_actor.observability import Metrics
    from bitnet_actor.services.api_keys import KeyPrincipal
    from bitnet_actor.services.authn import AuthServices
    from bitnet_actor.services.billing.checkout import StripeCheckout
    from bitnet_actor.services.billing.ledger import UsageEvent
    from bitnet_actor.services.billing.plans import OrgProfile
    from bitnet_actor.services.models.encrypted import EncryptedObjects
    from bitnet_actor.services.models.files import LocalFiles
    from bitnet_actor.services.models.registry import ModelVersion
    from bitnet_actor.services.models.routes import Route
    from bitnet_actor.services.ratelimit import Decision
    from bitnet_actor.stores.objects import ObjectStore
    from bitnet_actor.stores.objects.regions import RegionStores
    from bitnet_actor.stores.postgres import Database
    from bitnet_actor.stores.redis import RedisStore

__all__ = [
    "Handles",
    "InferenceHandle",
    "LimitsHandle",
    "LocalObjectServer",
    "MeterHandle",
    "ModelsHandle",
    "Readiness",
    "RoutesHandle",
    "StoresHandle",
    "TenantsHandle",
]


class InferenceHandle(Protocol):
    """Model leases and generation requests."""

    def lease(self, name: str) -> AbstractAsyncContextManager[Lease]:
        """The loaded model ``name`` for a block (raises the model cache's errors on entry)."""
        ...

    def lease_version(self, version: ModelVersion) -> AbstractAsyncContextManager[Lease]:
        """The loaded weights of a registry version for a block (named ``name:version``)."""
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

    def admit(self, org_id: UUID) -> AbstractAsyncContextManager[OrgProfile]:
        """Hold one request of ``org_id`` in flight for a block; yields what it runs under."""
        ...

    async def profile(self, org_id: UUID) -> OrgProfile:
        """What ``org_id`` runs under (cached)."""
        ...

    def forget(self, org_id: UUID) -> None:
        """Reload ``org_id``'s plan on its next request."""
        ...


class MeterHandle(Protocol):
    """The usage ledger's meter."""

    def record(self, event: UsageEvent) -> None:
        """Take one request's usage; never waits (buffered, batched, spilled to disk when the database is
        away; never silently dropped)."""
        ...


class LimitsHandle(Protocol):
    """Rate limits, concurrency caps and quotas, shared by every replica."""

    async def admit(
        self,
        profile: OrgProfile,
        *,
        key: KeyPrincipal | None,
        user_id: UUID | None,
        request_id: str,
        tokens: int = 0,
        requests: int = 1,
    ) -> Decision:
        """Check (``requests=1``) or read (``requests=0``) a request's limits (raises
        ``LimiterUnavailableError`` when Redis has been away past the fail-open window)."""
        ...

    async def settle(self, decision: Decision, *, used_tokens: int, wait: bool = True) -> None:
        """Give back what an admitted request reserved and did not use; never raises for Redis.
        ``wait=False``: hand it to the settler task (off the response path; this replica's next
        admission still comes after it)."""
        ...


class RoutesHandle(Protocol):
    """Organizations' A/B routes, cached on this replica and invalidated from every replica."""

    async def get(self, org_id: UUID, public_name: str) -> Route | None:
        """The route ``public_name`` of ``org_id``, or None."""
        ...

    def invalidate(self, org_id: UUID, public_name: str) -> None:
        """Forget one route on this replica at once (the change is also published to the others)."""
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

    @property
    def regions(self) -> RegionStores | None:
        """The stores of every region (``BITNET_REGION_STORES``), ``objects`` as their default."""
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
    meter: MeterHandle
    limits: LimitsHandle
    model_objects: EncryptedObjects
    """Model files in the object store, encrypted at rest (uploads, parts, conversion outputs)."""
    model_files: LocalFiles
    """Their decrypted local copies in the data dir (inference and conversion jobs share one)."""
    routes: RoutesHandle
    link_key: bytes
    """The key signing model download links (derived from the service's secret key)."""
    tracing: Tracing = field(default_factory=Tracing)
    """Request traces (off unless an OTLP endpoint is configured)."""
    readiness: Readiness = field(default_factory=Readiness)
    checkout: StripeCheckout | None = None
    """Stripe Checkout and Billing Portal sessions; None when no Stripe key is configured (billing is local)."""
