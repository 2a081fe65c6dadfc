"""One GraphQL request's state: who is asking, what has been fetched for it, and what to fetch next.

graphql-core (strawberry's executor, ariadne's too) awaits sibling resolvers with ``asyncio.gather`` and
``asyncio.ensure_future``, which trio cannot run. So the resolvers of :mod:`.schema` are synchronous and do
no I/O: each reads what it needs from :meth:`GraphContext.fetched`, which either returns what an earlier
round fetched or notes the fetch (a key and a call of the same service the REST route uses) and fails the
field with :class:`Pending`. The view executes the document, awaits :meth:`GraphContext.fetch_wanted` (in
trio, a few fetches at a time) and executes again, until a round wants nothing new: that round's result is
the answer. Reads have no side effects and each round only adds to what is known, so re-executing is safe.
The longest chain of fetches is four (the caller's standing, a listing, a version's lineage, its ancestors'
lineages: every deeper ``lineage`` is of a version already fetched), so five executions; :data:`MAX_ROUNDS`
keeps one spare.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from bitnet_actor.api.errors import ApiError, service_error
from bitnet_actor.services.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable

    from bitnet_actor.handles import Handles
    from bitnet_actor.services.authn import Principal

__all__ = ["FETCH_CONCURRENCY", "MAX_ROUNDS", "GraphContext", "Pending"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ROUNDS: Final = 6
"""Executions of one document at most (a query needing more is a bug of the schema: a 500)."""
FETCH_CONCURRENCY: Final = 2
"""Fetches of one round at once: each holds a database connection while it runs (a fifth of the default pool
of 10, so one query's fan-out does not crowd out other requests)."""


class Pending(Exception):
    """A field's data is not fetched yet; the next round has it."""


@dataclass(frozen=True, slots=True)
class _Failed:
    """A fetch that a domain rule refused (shown as the field's error), or that failed unexpectedly."""

    error: Exception


class GraphContext:
    """The ``context_value`` of one request's executions.

    Args:
        handles: The running system's handles (stores, auth).
        principal: The authenticated caller.
    """

    def __init__(self, handles: Handles, principal: Principal) -> None:
        self.handles = handles
        self.principal = principal
        self._done: dict[Hashable, Any] = {}
        self._wanted: dict[Hashable, Callable[[], Awaitable[Any]]] = {}
        self.now = int(time.time())  # one "now" for every round (usage's default end_time)

    def fetched(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """What ``fetch`` returned when a round ran it under ``key``.

        Raises:
            Pending: not fetched yet (``fetch`` is now wanted; the round's result is discarded).
            ApiError: the fetch was refused (a 404 for another tenant's object, a 400 for a bad argument).
        """
        if key in self._done:
            value = self._done[key]
            if isinstance(value, _Failed):
                raise value.error
            found: T = value
            return found
        self._wanted.setdefault(key, fetch)
        raise Pending(repr(key))

    def seed(self, key: Hashable, value: object) -> None:
        """Record ``value`` as fetched under ``key`` (a listing that returned it already)."""
        self._done.setdefault(key, value)

    def fetched_of(self, kind: type[T]) -> list[T]:
        """Every fetched value of type ``kind`` (the standings in organizations, for the request's log lines)."""
        return [value for value in self._done.values() if isinstance(value, kind)]

    async def fetch_wanted(self) -> bool:
        """Run every fetch the last execution wanted; False when it wanted none (its result is final).

        Raises:
            Exception: the first fetch that failed unexpectedly (a store down: the app's error handlers answer).
        """
        wanted, self._wanted = self._wanted, {}
        if not wanted:
            return False
        limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for key, fetch in wanted.items():
                nursery.start_soon(self._fetch_one, key, fetch, limiter)
        for key in wanted:
            value = self._done[key]
            if isinstance(value, _Failed) and not isinstance(value.error, ApiError):
                raise value.error
        return True

    async def _fetch_one(
        self, key: Hashable, fetch: Callable[[], Awaitable[Any]], limiter: trio.CapacityLimiter
    ) -> None:
        async with limiter:
            try:
                self._done[key] = await fetch()
            except ApiError as exc:
                self._done[key] = _Failed(exc)
            except ServiceError as exc:
                self._done[key] = _Failed(service_error(exc))
            except Exception as exc:  # raised by fetch_wanted, ungrouped, once the others are done
                self._done[key] = _Failed(exc)
