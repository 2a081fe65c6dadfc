"""A TCP proxy in front of the test PostgreSQL that a test can cut or make hang: the real server, reached
through a connection the test controls (an outage without stopping the shared server)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class PgProxy:
    """Forwards 127.0.0.1:<port> to the server of ``dsn``; ``cut()``, ``hang()``, ``restore()``."""

    def __init__(self, dsn: str) -> None:
        self.target = dsn
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        self._unix = query.get("host") if query.get("host", "").startswith("/") else None
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 5432
        if self._unix:
            self._unix = f"{self._unix}/.s.PGSQL.{query.get('port', self._port)}"
        self.mode = "up"
        self._flowing = trio.Event()
        self._flowing.set()
        self.port = 0
        self._links: set[trio.CancelScope] = set()

    def dsn(self) -> str:
        """The DSN that goes through the proxy (over TCP, whatever the target's transport)."""
        parts = urlsplit(self.target)
        query = {k: v for k, v in parse_qsl(parts.query) if k not in ("host", "port")}
        user = parts.username or "postgres"
        auth = f"{user}:{parts.password}@" if parts.password else f"{user}@"
        return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{self.port}", parts.path, urlencode(query), ""))

    def cut(self) -> None:
        """Drop every connection and refuse new ones (closed at once)."""
        self.mode = "down"
        self._flowing.set()
        for link in list(self._links):
            link.cancel()

    def hang(self) -> None:
        """Connections stay open, nothing passes either way (a server that does not answer)."""
        self.mode = "hang"
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def restore(self) -> None:
        """Forward again (new connections; those cut stay cut)."""
        self.mode = "up"
        self._flowing.set()

    async def _upstream(self) -> trio.abc.Stream:
        if self._unix:
            return await trio.open_unix_socket(self._unix)
        return await trio.open_tcp_stream(self._host, self._port)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.mode == "down":
                return
            with trio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    server = await self._upstream()
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
                finally:
                    self._links.discard(scope)

    async def _pump(self, source: trio.abc.Stream, sink: trio.abc.Stream, link: trio.CancelScope) -> None:
        try:
            async for data in source:
                await self._flowing.wait()
                if self.mode == "down":
                    break
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        link.cancel()  # one side is gone: so is the link


@asynccontextmanager
async def open_pg_proxy(dsn: str) -> AsyncIterator[PgProxy]:
    """Run a proxy to ``dsn`` for the block."""
    proxy = PgProxy(dsn)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
