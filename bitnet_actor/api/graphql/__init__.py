"""GraphQL at ``/graphql``: read-only queries over the caller's organizations, with ``/api/v1``'s
authentication, roles and tenant isolation.

Modules: :mod:`.view` (the route: HTTP in and out), :mod:`.limits` (size, depth, aliases, cost),
:mod:`.schema` (the query root and organizations), :mod:`.types` (what is inside an organization) and
:mod:`.context` (one request's fetches, and why resolvers are synchronous under trio).
"""

from __future__ import annotations

from bitnet_actor.api.graphql.view import blueprint

__all__ = ["blueprint"]
