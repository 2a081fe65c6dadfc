"""The read-only GraphQL schema: the caller's organizations and, inside one, what ``/api/v1`` shows of it.

Every resolver under an organization checks the caller's standing there (an :class:`~bitnet_actor.api.auth.
OrgAccess` resolved as ``/api/v1`` resolves it: another organization is "no such organization", as REST's
404) and the permission of the REST route that reads the same thing (``permit``), then reads through the
same service, scoped to the standing's ``org_id`` (never to an id from the query). A refused field is null
with an error whose ``extensions`` carry the REST status (403 FORBIDDEN, 404 NOT_FOUND, 400 BAD_REQUEST).

| field                              | permission    | service                                    |
|------------------------------------|---------------|--------------------------------------------|
| ``name``, ``plan``, ``createdAt``  | org:read      | ``tenancy.get_org``                        |
| ``region``                         | org:read      | ``plans.org_profile``                      |
| ``members``                        | members:read  | ``tenancy.list_members``                   |
| ``keys``, ``key(id)``              | keys:read     | ``api_keys.list_keys``                     |
| ``models``, ``model(name)``        | models:read   | ``registry.list_models`` (``lineage``)     |
| ``jobs``, ``job(id)``              | models:read   | ``jobs.list_jobs``, ``jobs.get_job``       |
| ``usage(...)``                     | billing:read  | ``usage.parse_usage_query``, ``query_usage`` |
| ``invoices``, ``invoice(id)``      | billing:read  | ``invoices.list_invoices``, ``get_invoice`` |

Resolvers are synchronous and read what :class:`~.context.GraphContext` fetched (see there why).
"""

from __future__ import annotations

import uuid
from datetime import datetime  # noqa: TC003  (strawberry reads resolvers' annotations at runtime)
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Final

import strawberry
from strawberry.schema.config import StrawberryConfig

from bitnet_actor.api.auth import CURRENT, OrgAccess, OrgRef, org_standing, permit
from bitnet_actor.api.errors import ApiError
from bitnet_actor.api.graphql.limits import LIST_SIZES
from bitnet_actor.api.graphql.types import (
    ApiKey,
    BigInt,
    Info,
    Invoice,
    Job,
    Member,
    Model,
    UsagePage,
    described,
    first_of,
)
from bitnet_actor.services import api_keys, tenancy
from bitnet_actor.services.billing import invoices, plans, usage
from bitnet_actor.services.models import jobs, registry

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable

    from graphql import GraphQLSchema

    from bitnet_actor.services.permissions import Permission

__all__ = ["GRAPHQL_SCHEMA", "SCHEMA", "Organization", "Query"]

_ID = Annotated[strawberry.ID, strawberry.argument(name="id")]


def _uuid(value: str, missing: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, missing) from None


@strawberry.type(description="An organization the caller belongs to (or its API key's).")
class Organization:
    access: strawberry.Private[OrgAccess]

    def _read(self, info: Info, permission: Permission, key: Hashable, fetch: Callable[..., Awaitable[Any]]) -> Any:
        """Check ``permission`` here, then what ``fetch(db, org_id)`` returned under ``(key, org_id)``."""
        permit(self.access, permission)
        ctx, org_id = info.context, self.access.org_id
        return ctx.fetched((key, org_id), partial(fetch, ctx.handles.stores.db, org_id))

    @strawberry.field
    def id(self) -> strawberry.ID:
        return strawberry.ID(str(self.access.org_id))

    @described("The caller's role here; null for an API key.")
    def role(self) -> str | None:
        return self.access.role

    @strawberry.field
    def name(self, info: Info) -> str | None:
        org: tenancy.Organization = self._read(info, "org:read", "org", tenancy.get_org)
        return org.name

    @strawberry.field
    def plan(self, info: Info) -> str | None:
        org: tenancy.Organization = self._read(info, "org:read", "org", tenancy.get_org)
        return org.plan

    @described("The home region: whose replicas serve its inference and keep its models.")
    def region(self, info: Info) -> str | None:
        profile: plans.OrgProfile = self._read(info, "org:read", "profile", plans.org_profile)
        return profile.region

    @strawberry.field
    def created_at(self, info: Info) -> datetime | None:
        org: tenancy.Organization = self._read(info, "org:read", "org", tenancy.get_org)
        return org.created_at

    @strawberry.field
    def members(self, info: Info, first: int = LIST_SIZES["Organization.members"].default) -> list[Member] | None:
        found: list[tenancy.Member] = self._read(info, "members:read", "members", tenancy.list_members)
        return [Member.of(m) for m in first_of(found, first, "Organization.members")]

    @described("API keys, newest first (never their secrets).")
    def keys(self, info: Info, first: int = LIST_SIZES["Organization.keys"].default) -> list[ApiKey] | None:
        found: list[api_keys.ApiKey] = self._read(info, "keys:read", "keys", api_keys.list_keys)
        return [ApiKey.of(k) for k in first_of(found, first, "Organization.keys")]

    @strawberry.field
    def key(self, info: Info, key_id: _ID) -> ApiKey | None:
        found: list[api_keys.ApiKey] = self._read(info, "keys:read", "keys", api_keys.list_keys)
        wanted = _uuid(key_id, "no such API key")
        for key in found:
            if key.id == wanted:
                return ApiKey.of(key)
        raise ApiError(404, "no such API key")

    @described("The organization's models and the platform's, with versions and aliases.")
    def models(self, info: Info, first: int = LIST_SIZES["Organization.models"].default) -> list[Model] | None:
        found: list[dict[str, Any]] = self._read(info, "models:read", "models", registry.list_models)
        return [Model.of(self.access, m) for m in first_of(found, first, "Organization.models")]

    @described("One model by name: the organization's own, else the platform's.")
    def model(self, info: Info, name: str) -> Model | None:
        registry.check_name(name)
        found: list[dict[str, Any]] = self._read(info, "models:read", "models", registry.list_models)
        named = [m for m in found if m["name"] == name]
        if not named:
            raise ApiError(404, f"no model {name}")
        own = [m for m in named if not m["platform"]]
        return Model.of(self.access, (own or named)[0])

    @described("Conversion jobs, newest first.")
    def jobs(self, info: Info, first: int = LIST_SIZES["Organization.jobs"].default) -> list[Job] | None:
        found: list[jobs.Job] = self._read(info, "models:read", "jobs", jobs.list_jobs)
        return [Job.of(j) for j in first_of(found, first, "Organization.jobs")]

    @strawberry.field
    def job(self, info: Info, job_id: _ID) -> Job | None:
        wanted = _uuid(job_id, "no such job")
        found: jobs.Job = self._read(info, "models:read", ("job", wanted), partial(_get_job, wanted))
        return Job.of(found)

    @described(
        "Completions usage per time bucket: the buckets of GET /api/v1/orgs/{org}/usage/completions"
        " for the same arguments (bucketWidth 1m, 1h or 1d; groupBy model and/or api_key_id)."
    )
    def usage(
        self,
        info: Info,
        start_time: BigInt,
        end_time: BigInt | None = None,
        bucket_width: str | None = None,
        group_by: list[str] | None = None,
        models: list[str] | None = None,
        api_key_ids: list[strawberry.ID] | None = None,
        limit: int | None = None,
        page: str | None = None,
    ) -> UsagePage | None:
        permit(self.access, "billing:read")
        given = {
            "start_time": start_time,
            "end_time": end_time,
            "bucket_width": bucket_width,
            "limit": limit,
            "page": page,
        }
        args: dict[str, list[str]] = {name: [str(value)] for name, value in given.items() if value is not None}
        for name, values in (("group_by", group_by), ("models", models), ("api_key_ids", api_key_ids)):
            if values:
                args[name] = [str(v) for v in values]
        query = usage.parse_usage_query(args, now=info.context.now)  # the REST route's own checks
        found: dict[str, Any] = self._read(info, "billing:read", ("usage", query), partial(_query_usage, query))
        return UsagePage.of(found)

    @described("Every invoice, newest month first; the current month's is a draft.")
    def invoices(self, info: Info, first: int = LIST_SIZES["Organization.invoices"].default) -> list[Invoice] | None:
        found: list[invoices.Invoice] = self._read(info, "billing:read", "invoices", invoices.list_invoices)
        return [Invoice.of(i) for i in first_of(found, first, "Organization.invoices")]

    @strawberry.field
    def invoice(self, info: Info, invoice_id: _ID) -> Invoice | None:
        wanted = _uuid(invoice_id, "no such invoice")
        found: invoices.Invoice = self._read(info, "billing:read", ("invoice", wanted), partial(_get_invoice, wanted))
        return Invoice.of(found)


async def _get_job(job_id: uuid.UUID, db: Any, org_id: uuid.UUID) -> jobs.Job:
    return await jobs.get_job(db, org_id, job_id)


async def _get_invoice(invoice_id: uuid.UUID, db: Any, org_id: uuid.UUID) -> invoices.Invoice:
    return await invoices.get_invoice(db, org_id, invoice_id)


async def _query_usage(query: usage.BucketQuery, db: Any, org_id: uuid.UUID) -> dict[str, Any]:
    return await usage.query_usage(db, org_id, query)


@strawberry.type(description="Read-only queries over the caller's organizations (there are no mutations).")
class Query:
    @described("The organizations the caller belongs to; an API key's own organization.")
    def organizations(self, info: Info, first: int = LIST_SIZES["Query.organizations"].default) -> list[Organization]:
        ctx, principal = info.context, info.context.principal
        if principal.key is not None:
            org_id = principal.key.org_id
            access = ctx.fetched(("standing", str(org_id)), partial(org_standing, principal, org_id))
            return [Organization(access=access)]
        assert principal.user_id is not None
        memberships: list[tenancy.Membership] = ctx.fetched(
            ("memberships",), partial(tenancy.user_memberships, ctx.handles.stores.db, principal.user_id)
        )
        out = []
        for membership in memberships:
            org = membership.org
            if principal.token_org is not None and org.id != principal.token_org:
                continue  # a token bound to one organization acts in that one only
            ctx.seed(("org", org.id), org)
            out.append(Organization(access=OrgAccess(principal, org.id, membership.role)))
        return first_of(out, first, "Query.organizations")

    @described('One organization by id, or "current" for the caller\'s own.')
    def organization(self, info: Info, org_id: _ID) -> Organization | None:
        ctx = info.context
        ref: OrgRef = CURRENT if org_id == CURRENT else _uuid(org_id, "no such organization")
        access = ctx.fetched(("standing", str(ref)), partial(org_standing, ctx.principal, ref))
        return Organization(access=access)


def _big_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BigInt cannot represent {value!r}")
    return value


SCHEMA: Final = strawberry.Schema(
    query=Query,
    config=StrawberryConfig(
        scalar_map={
            BigInt: strawberry.scalar(
                name="BigInt",
                description="An integer that may exceed 32 bits (token counts, cents, Unix seconds).",
                serialize=_big_int,
                parse_value=_big_int,
            )
        }
    ),
)
GRAPHQL_SCHEMA: Final[GraphQLSchema] = SCHEMA._schema
"""The graphql-core schema strawberry built: the view parses, validates and executes against it directly, so
that one request is parsed and validated once however many rounds it executes."""
