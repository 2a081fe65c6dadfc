"""PostgreSQL through asyncpg, run inside the trio-asyncio loop.

``open_database(dsn)`` owns an asyncpg pool for as long as its ``async with`` block runs. Every call crosses
into asyncio once (``aio_as_trio`` around a whole coroutine), so trio cancel scopes cancel a running query
and the connection goes back to the pool usable.

Tenancy: ``Database.transaction(org_id=...)`` sets ``app.org_id`` with ``set_config(..., true)``: local to
that transaction, so it can never leak to the next user of the pooled connection. Row-level security
policies read it with ``current_setting('app.org_id', true)``.

Errors are mapped here: connection failures and a server that is shutting down, starting up or out of
connections -> ``StoreUnavailableError``, unique/foreign-key/check
violations -> ``ConflictError``, anything else the server rejects -> ``QueryError``.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import asyncpg
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from bitnet_actor.errors import ConflictError, QueryError, StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
    from uuid import UUID

__all__ = ["Connection", "Database", "Record", "open_database", "redact_dsn"]

T = TypeVar("T")
_CLEANUP_S = 5.0  # how long rollback / release may take after the caller was cancelled
Record = asyncpg.Record

# Errors that mean "the server is not there / the connection broke", as opposed to a rejected query.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection the server ended while a query was starting
    TimeoutError,
)
_UNAVAILABLE_OR_REJECTED: tuple[type[Exception], ...] = (*_UNAVAILABLE, asyncpg.PostgresError)

# Errors the server sends when it is going away or cannot serve anyone now, not because of the query:
# connection exceptions (08), insufficient resources (53: too many connections, disk full, out of memory)
# and the operator's interventions but a cancelled statement (57P01 admin shutdown, 57P02 crash shutdown,
# 57P03 not accepting connections / starting up / shutting down, 57P05 idle session timeout).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "57P05")
_UNAVAILABLE_MESSAGES = (
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is not accepting connections",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        message = str(exc).lower()
        return any(m in message for m in _UNAVAILABLE_MESSAGES)
    return False


def redact_dsn(dsn: str) -> str:
    """Return ``dsn`` with any password replaced by ``***``, fit for logs and error messages."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
        raise ConflictError(f"{what}: {exc}", constraint=getattr(exc, "constraint_name", None)) from exc
    except asyncpg.PostgresError as exc:
        if _is_unavailable(exc):
            raise StoreUnavailableError(f"{what}: PostgreSQL unavailable: {exc}") from exc
        raise QueryError(f"{what}: {exc}") from exc
    except _UNAVAILABLE as exc:
        raise StoreUnavailableError(f"{what}: PostgreSQL unavailable: {exc or type(exc).__name__}") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json/jsonb as Python objects both ways.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Connection:
    """One connection, inside a transaction or not; the query methods of ``Database`` on it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; return its status tag (``"INSERT 0 1"``)."""
        with _mapped("query"):
            result: str = await aio_as_trio(self._conn.execute)(query, *args)
        return result

    async def executemany(self, query: str, args: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per argument tuple."""
        with _mapped("query"):
            await aio_as_trio(self._conn.executemany)(query, args)

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        """Return all rows."""
        with _mapped("query"):
            rows: list[Record] = await aio_as_trio(self._conn.fetch)(query, *args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        """Return the first row, or None."""
        with _mapped("query"):
            row: Record | None = await aio_as_trio(self._conn.fetchrow)(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        """Return the first column of the first row, or None."""
        with _mapped("query"):
            return await aio_as_trio(self._conn.fetchval)(query, *args)

    async def run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn(conn)`` in asyncio in one crossing (several queries for the cost of one bridge hop)."""
        with _mapped("query"):
            result: T = await aio_as_trio(fn)(self._conn)
        return result


class Database:
    """A pool of PostgreSQL connections. Create with ``open_database``."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self.dsn = dsn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Hold one pooled connection for the block (no transaction)."""
        raw = await self._acquire()
        try:
            yield Connection(raw)
        finally:
            await self._release(raw)  # noqa: ASYNC102  # _release shields itself, with a timeout

    @asynccontextmanager
    async def transaction(
        self,
        *,
        org_id: UUID | str | None = None,
        readonly: bool = False,
        isolation: Literal["read_committed", "repeatable_read", "serializable"] = "read_committed",
    ) -> AsyncIterator[Connection]:
        """Run the block in one transaction, committed on success and rolled back on any exception.

        Rollback and the connection's return to the pool are shielded from cancellation, so a cancelled
        request never leaves a connection in an open transaction.

        Args:
            org_id: the tenant this transaction acts for; row-level security sees it as ``app.org_id``.
            readonly: start a READ ONLY transaction.
            isolation: ``read_committed``, ``repeatable_read`` or ``serializable``.
        """
        raw = await self._acquire()
        try:
            tx = raw.transaction(isolation=isolation, readonly=readonly)
            with _mapped("begin"):
                await aio_as_trio(tx.start)()
            conn = Connection(raw)
            try:
                if org_id is not None:
                    await conn.execute("SELECT set_config('app.org_id', $1, true)", str(org_id))
                yield conn
            except BaseException:
                with trio.move_on_after(_CLEANUP_S, shield=True):
                    try:
                        await aio_as_trio(tx.rollback)()
                    except Exception:  # the original error matters more; a broken connection is dropped
                        raw.terminate()
                raise
            try:
                with _mapped("commit"):
                    await aio_as_trio(tx.commit)()
            except BaseException:  # cancelled or failed mid-commit: the connection's state is unknown
                raw.terminate()
                raise
        finally:
            await self._release(raw)  # noqa: ASYNC102  # _release shields itself, with a timeout

    async def _acquire(self) -> asyncpg.Connection:
        with _mapped("acquire"):
            raw: asyncpg.Connection = await aio_as_trio(self._pool.acquire)()
        return raw

    async def _release(self, raw: asyncpg.Connection) -> None:
        with trio.move_on_after(_CLEANUP_S, shield=True) as scope:
            try:
                await aio_as_trio(self._pool.release)(raw)
            except Exception:  # a broken connection: the pool replaces it
                raw.terminate()
        if scope.cancelled_caught:  # pragma: no cover - server stopped answering
            raw.terminate()

    async def _pooled(self, method: str, query: str, args: Sequence[Any]) -> Any:
        # In asyncio, in one crossing: acquire, query, release. asyncpg's own pool.<method> releases with
        # no timeout, so a query cancelled on a server that hangs held its caller for as long as the
        # cancel request took to time out (60 s: a shutdown stuck behind it); here, _CLEANUP_S at most.
        con = await self._pool.acquire()
        try:
            return await getattr(con, method)(query, *args)
        finally:
            await self._pool.release(con, timeout=_CLEANUP_S)  # noqa: ASYNC102  # asyncio code, its own timeout

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement on any pooled connection; return its status tag."""
        with _mapped("query"):
            result: str = await aio_as_trio(self._pooled)("execute", query, args)
        return result

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        """Return all rows."""
        with _mapped("query"):
            rows: list[Record] = await aio_as_trio(self._pooled)("fetch", query, args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        """Return the first row, or None."""
        with _mapped("query"):
            row: Record | None = await aio_as_trio(self._pooled)("fetchrow", query, args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        """Return the first column of the first row, or None."""
        with _mapped("query"):
            return await aio_as_trio(self._pooled)("fetchval", query, args)

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless PostgreSQL answers ``SELECT 1``."""
        with trio.fail_after(5):
            if await self.fetchval("SELECT 1") != 1:  # pragma: no cover - a server that can't add
                raise StoreUnavailableError("PostgreSQL answered SELECT 1 wrongly")

    def statistics(self) -> dict[str, int]:
        """Pool size and idle connections, for metrics."""
        return {"size": self._pool.get_size(), "idle": self._pool.get_idle_size()}


_aio_log = logging.getLogger("bitnet_actor.asyncio")


def _log_asyncio_error(loop: Any, context: dict[str, Any]) -> None:
    # trio-asyncio's default handler re-raises every error asyncio only *logs* (an orphaned task of the
    # driver: a pooled connection reset after its query was cancelled at shutdown), which would take the
    # whole service down with it. Such an error concerns one connection, which the pool replaces: log it.
    exc = context.get("exception")
    _aio_log.error("asyncio: %s", context.get("message") or "error", exc_info=exc)


def quiet_asyncio_errors() -> None:
    """Log, not raise, what asyncio reports through its exception handler (called inside the loop)."""
    loop = trio_asyncio.current_loop.get()
    if loop is not None:
        loop.set_exception_handler(_log_asyncio_error)


@asynccontextmanager
async def open_database(
    dsn: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
) -> AsyncIterator[Database]:
    """Open a pool to ``dsn`` for the block; must run inside ``trio_asyncio.open_loop()``.

    Raises:
        StoreUnavailableError: the server cannot be reached within ``connect_timeout`` seconds.
    """
    where = redact_dsn(dsn)
    quiet_asyncio_errors()
    try:
        with trio.fail_after(connect_timeout):
            pool = await aio_as_trio(asyncpg.create_pool)(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                timeout=connect_timeout,
                command_timeout=None,
            )
    except trio.TooSlowError:
        raise StoreUnavailableError(f"PostgreSQL at {where} did not answer within {connect_timeout:g} s") from None
    except _UNAVAILABLE_OR_REJECTED as exc:
        raise StoreUnavailableError(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
    try:
        yield Database(pool, dsn)
    finally:
        with trio.move_on_after(10, shield=True) as scope:
            await aio_as_trio(pool.close)()
        if scope.cancelled_caught:  # pragma: no cover - a connection stuck in a query
            pool.terminate()
