"""The GraphQL object types inside an organization, each built from the record its service returns (what
the REST route shows, camel-cased): :class:`Member`, :class:`ApiKey` (never the secret or its hash: the
service's record holds neither), :class:`Model` / :class:`ModelVersion`, :class:`Job`, the usage page and
:class:`Invoice`. Timestamps are ISO 8601 ``DateTime`` values; usage buckets keep Unix seconds, as their
arguments do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NewType, TypeVar

import strawberry
from strawberry.scalars import JSON

from bitnet_actor.api.auth import OrgAccess, permit
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.graphql.context import GraphContext
from bitnet_actor.api.graphql.limits import LIST_SIZES
from bitnet_actor.services.billing.invoices import period_bounds
from bitnet_actor.services.models import registry

if TYPE_CHECKING:
    from collections.abc import Callable

    from bitnet_actor.services import api_keys, tenancy
    from bitnet_actor.services.billing import invoices
    from bitnet_actor.services.models import jobs

__all__ = [
    "ApiKey",
    "BigInt",
    "Info",
    "Invoice",
    "InvoiceLine",
    "Job",
    "Member",
    "Model",
    "ModelAlias",
    "ModelVersion",
    "UsageBucket",
    "UsagePage",
    "UsageResult",
    "described",
    "first_of",
]

BigInt = NewType("BigInt", int)
"""An integer past GraphQL's 32-bit ``Int``: token counts, cents, Unix seconds."""

Info = strawberry.Info[GraphContext, None]

T = TypeVar("T")
F = TypeVar("F", bound="Callable[..., Any]")


def described(text: str) -> Callable[[F], F]:
    """``@described(text)``, typed for mypy (strawberry types that overload as ``Any``)."""
    decorator: Callable[[F], F] = strawberry.field(description=text)
    return decorator


def first_of(items: list[T], first: int, where: str) -> list[T]:
    """The first ``first`` of ``items``, ``first`` being the ``first`` argument of the list field ``where``.

    Raises:
        ApiError: 400 outside 1 .. the field's maximum (:data:`~.limits.LIST_SIZES`).
    """
    maximum = LIST_SIZES[where].maximum
    if not 1 <= first <= maximum:
        raise ApiError(400, f"first must be between 1 and {maximum}", param="first")
    return items[:first]


def _unix(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


@strawberry.type(description="A member of the organization and their role.")
class Member:
    user_id: strawberry.ID
    email: str
    name: str
    role: str
    joined_at: datetime

    @classmethod
    def of(cls, member: tenancy.Member) -> Member:
        """From the tenancy service's record."""
        return cls(
            user_id=strawberry.ID(str(member.user_id)),
            email=member.email,
            name=member.name,
            role=member.role,
            joined_at=member.joined_at,
        )


@strawberry.type(description="An API key as listed: its display prefix and last four characters, never the secret.")
class ApiKey:
    id: strawberry.ID
    name: str
    prefix: str
    last4: str
    scopes: list[str]
    active: bool
    created_by: strawberry.ID | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_to: strawberry.ID | None
    rpm: int | None
    tpm: BigInt | None
    max_concurrency: int | None

    @classmethod
    def of(cls, key: api_keys.ApiKey) -> ApiKey:
        """From the key service's record (which holds no secret and no hash)."""
        return cls(
            id=strawberry.ID(str(key.id)),
            name=key.name,
            prefix=key.prefix,
            last4=key.last4,
            scopes=list(key.scopes),
            active=key.active,
            created_by=strawberry.ID(str(key.created_by)) if key.created_by else None,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
            rotated_to=strawberry.ID(str(key.rotated_to)) if key.rotated_to else None,
            rpm=key.rpm,
            tpm=BigInt(key.tpm) if key.tpm is not None else None,
            max_concurrency=key.max_concurrency,
        )


@strawberry.type(description="One version of a model: its state, facts, evals, aliases and origin.")
class ModelVersion:
    access: strawberry.Private[OrgAccess]
    id: strawberry.ID = strawberry.field(description="name:version")
    version_id: strawberry.ID
    name: str
    version: str
    state: str
    platform: bool
    sha256: str | None
    aliases: list[str]
    facts: JSON
    evals: JSON
    description: str
    parent_version_id: strawberry.ID | None
    origin: str
    origin_details: JSON
    error: str | None
    created_at: datetime
    published_at: datetime | None
    deprecated_at: datetime | None

    @classmethod
    def of(cls, access: OrgAccess, view: dict[str, Any]) -> ModelVersion:
        """From the registry's API view of a version (``ModelVersion.to_json``)."""
        parent = view["parent_version_id"]
        return cls(
            access=access,
            id=strawberry.ID(view["id"]),
            version_id=strawberry.ID(view["version_id"]),
            name=view["name"],
            version=view["version"],
            state=view["state"],
            platform=view["platform"],
            sha256=view["sha256"],
            aliases=list(view["aliases"]),
            facts=JSON(view["facts"]),
            evals=JSON(view["evals"]),
            description=view["description"],
            parent_version_id=strawberry.ID(parent) if parent else None,
            origin=view["origin"],
            origin_details=JSON(view["origin_details"]),
            error=view["error"],
            created_at=datetime.fromtimestamp(view["created_at"], UTC),
            published_at=_unix(view["published_at"]),
            deprecated_at=_unix(view["deprecated_at"]),
        )

    @described("The chain from this version to its root, this version first.")
    def lineage(self, info: Info) -> list[ModelVersion]:
        permit(self.access, "models:read")
        ctx, org_id = info.context, self.access.org_id
        chain = ctx.fetched(
            ("lineage", org_id, self.name, self.version),
            partial(registry.lineage, ctx.handles.stores.db, org_id, self.name, self.version),
        )
        return [ModelVersion.of(self.access, v.to_json()) for v in chain]


@strawberry.type(description="An alias of a model and the version it points at.")
class ModelAlias:
    alias: str
    version: str


@strawberry.type(description="A model: its versions (newest first) and aliases; platform models are read-only.")
class Model:
    access: strawberry.Private[OrgAccess]
    view: strawberry.Private[dict[str, Any]]
    name: str
    platform: bool
    aliases: list[ModelAlias]

    @classmethod
    def of(cls, access: OrgAccess, view: dict[str, Any]) -> Model:
        """From one entry of the registry's model listing (``registry.list_models``)."""
        aliases = [ModelAlias(alias=a, version=v) for a, v in sorted(view["aliases"].items())]
        return cls(access=access, view=view, name=view["name"], platform=view["platform"], aliases=aliases)

    @described("The versions, newest first.")
    def versions(self, first: int = LIST_SIZES["Model.versions"].default) -> list[ModelVersion]:
        views = first_of(self.view["versions"], first, "Model.versions")
        return [ModelVersion.of(self.access, v) for v in views]

    @described("One version by its label.")
    def version(self, version: str) -> ModelVersion | None:
        for view in self.view["versions"]:
            if view["version"] == version:
                return ModelVersion.of(self.access, view)
        raise ApiError(404, f"no model version {self.name}:{version}")


@strawberry.type(description="A conversion job: state, attempts, progress, error, result version.")
class Job:
    id: strawberry.ID
    kind: str
    source_version_id: strawberry.ID | None
    target: str
    output: str = strawberry.field(description="name:version of the version it makes")
    state: str
    attempts: int
    max_attempts: int
    progress: JSON
    error: str | None
    result_version_id: strawberry.ID | None
    cancel_requested: bool
    cpu_seconds: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: jobs.Job) -> Job:
        """From the job service's record."""
        return cls(
            id=strawberry.ID(str(job.id)),
            kind=job.kind,
            source_version_id=strawberry.ID(str(job.source_version_id)) if job.source_version_id else None,
            target=job.target,
            output=f"{job.output_name}:{job.output_version}",
            state=job.state,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            progress=JSON(job.progress),
            error=job.error,
            result_version_id=strawberry.ID(str(job.result_version_id)) if job.result_version_id else None,
            cancel_requested=job.cancel_requested,
            cpu_seconds=round(job.cpu_seconds, 3),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


@strawberry.type(description="Completions usage of one group in one bucket (null fields: not grouped by).")
class UsageResult:
    input_tokens: BigInt
    output_tokens: BigInt
    input_cached_tokens: BigInt
    num_model_requests: BigInt
    model: str | None
    api_key_id: strawberry.ID | None


@strawberry.type(description="A time bucket [startTime, endTime) in Unix seconds, UTC-aligned to its width.")
class UsageBucket:
    start_time: BigInt
    end_time: BigInt
    results: list[UsageResult]


@strawberry.type(description="One page of usage buckets (every bucket of the page, empty ones too).")
class UsagePage:
    buckets: list[UsageBucket]
    has_more: bool
    next_page: str | None = strawberry.field(description="the page argument of the next page; null on the last")

    @classmethod
    def of(cls, page: dict[str, Any]) -> UsagePage:
        """From the usage service's page (OpenAI's shape, as the REST route answers it)."""
        buckets = [
            UsageBucket(
                start_time=BigInt(b["start_time"]),
                end_time=BigInt(b["end_time"]),
                results=[
                    UsageResult(
                        input_tokens=BigInt(r["input_tokens"]),
                        output_tokens=BigInt(r["output_tokens"]),
                        input_cached_tokens=BigInt(r["input_cached_tokens"]),
                        num_model_requests=BigInt(r["num_model_requests"]),
                        model=r["model"],
                        api_key_id=strawberry.ID(r["api_key_id"]) if r["api_key_id"] else None,
                    )
                    for r in b["results"]
                ],
            )
            for b in page["data"]
        ]
        return cls(buckets=buckets, has_more=page["has_more"], next_page=page["next_page"])


@strawberry.type(description="An invoice line: quantity tokens (1 for the base fee) at a price per 1M tokens.")
class InvoiceLine:
    line_no: int
    kind: str
    model: str | None
    description: str
    quantity: BigInt
    unit_price_per_m_cents: str = strawberry.field(description="a decimal, as a string")
    amount_cents: BigInt


@strawberry.type(description="A monthly invoice; the current month's is a draft computed when read.")
class Invoice:
    id: strawberry.ID
    period: str = strawberry.field(description="YYYY-MM")
    period_start: datetime
    period_end: datetime
    plan: str
    status: str
    currency: str
    lines: list[InvoiceLine]
    subtotal_cents: BigInt
    total_cents: BigInt
    input_tokens: BigInt
    output_tokens: BigInt
    requests: BigInt
    created_at: datetime
    updated_at: datetime
    finalized_at: datetime | None

    @classmethod
    def of(cls, invoice: invoices.Invoice) -> Invoice:
        """From the invoice service's record."""
        start, end = period_bounds(invoice.period)
        lines = [
            InvoiceLine(
                line_no=line.line_no,
                kind=line.kind,
                model=line.model or None,
                description=line.description,
                quantity=BigInt(line.quantity),
                unit_price_per_m_cents=str(line.unit_price_per_m),
                amount_cents=BigInt(line.amount_cents),
            )
            for line in invoice.lines
        ]
        return cls(
            id=strawberry.ID(str(invoice.id)),
            period=invoice.period_label,
            period_start=start,
            period_end=end,
            plan=invoice.plan,
            status=invoice.status,
            currency=invoice.currency,
            lines=lines,
            subtotal_cents=BigInt(invoice.subtotal_cents),
            total_cents=BigInt(invoice.total_cents),
            input_tokens=BigInt(invoice.input_tokens),
            output_tokens=BigInt(invoice.output_tokens),
            requests=BigInt(invoice.requests),
            created_at=invoice.created_at,
            updated_at=invoice.updated_at,
            finalized_at=invoice.finalized_at,
        )
