"""Home regions: an organization's inference and model writes are served by the replicas of its region.

Every organization has a home region (``organizations.region``, set at creation to the creating replica's
``BITNET_REGION``, moved only by an operator). A replica of another region answers that organization's
inference (``/v1/*``, through :func:`check_home_region` in admission and the model listing) and its model
upload, registry and route writes (:func:`model_write_access`) with **421 Misdirected Request** in OpenAI's
error shape, naming the right region and, from ``BITNET_REGION_URLS``, its base URL (also in the
``x-bitnet-region`` and ``x-bitnet-region-url`` headers). Reads of the registry and account routes answer
anywhere: the database is shared, only the serving and the model bytes are regional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitnet_actor.api.auth import OrgAccess, OrgRef, handles, org_access
from bitnet_actor.api.errors import ApiError
from bitnet_actor.config import parse_region_urls

if TYPE_CHECKING:
    from uuid import UUID

    from bitnet_actor.handles import Handles

__all__ = ["check_home_region", "model_write_access"]


async def check_home_region(h: Handles, org_id: UUID) -> None:
    """Nothing when this replica serves ``org_id``'s region.

    Raises:
        ApiError: 421 naming the organization's region and its base URL.
    """
    profile = await h.tenants.profile(org_id)
    home = profile.region
    if home == h.settings.region:
        return
    url = parse_region_urls(h.settings.region_urls).get(home)
    where = f" at {url}" if url else " (no base URL is configured for it here)"
    headers = {"x-bitnet-region": home, **({"x-bitnet-region-url": url} if url else {})}
    raise ApiError(
        421,
        f"this organization is served in region {home!r}{where}; this server is region {h.settings.region!r}",
        type_="invalid_request_error",
        code="misdirected_request",
        headers=headers,
    )


async def model_write_access(org: OrgRef) -> OrgAccess:
    """``org_access(org, "models:write")``, then the home-region check (model bytes live in the region).

    Raises:
        ApiError: 401 / 403 / 404 as ``org_access``; 421 from a replica of another region.
    """
    access = await org_access(org, "models:write")
    await check_home_region(handles(), access.org_id)
    return access
