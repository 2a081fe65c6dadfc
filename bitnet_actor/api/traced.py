"""The HTTP side of tracing (:mod:`bitnet_actor.tracing`): a SERVER span per request, its parent taken from the
request's ``traceparent``, handed back in the response's; a streamed response's span ends with its last byte.
Child spans of the request (auth, rate limit, the generation) come from :func:`child_span` and
:func:`request_context`. Nothing runs when tracing is off but one attribute check per request.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from quart import g, has_app_context, request
from quart.wrappers.response import IterableBody

from bitnet_actor.observability import bind_log_context
from bitnet_actor.tracing import trace_ids

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from opentelemetry.context import Context
    from quart import Response
    from quart_trio import QuartTrio

    from bitnet_actor.tracing import Tracing

__all__ = ["child_span", "install", "request_context"]


def request_context() -> Context | None:
    """The current request's trace context (its SERVER span), None when tracing is off or outside a request."""
    return g.get("trace_context") if has_app_context() else None


@contextlib.contextmanager
def child_span(tracing: Tracing, name: str, **attributes: Any) -> Iterator[trace.Span | None]:
    """A child span of the current request's for the block (None and no cost when tracing is off); an
    exception leaving the block marks it as an error."""
    context = request_context() if tracing.enabled else None
    if context is None:
        yield None
        return
    with tracing.tracer.start_as_current_span(name, context=context, attributes=attributes) as span:
        yield span


class _EndsSpan:
    """A streamed body that ends the request's span when the stream ends, fails or is closed (a class, not an
    async generator: flake8-async ASYNC900)."""

    def __init__(self, inner: AsyncIterator[Any], span: trace.Span) -> None:
        self._inner, self._span, self._done = inner, span, False

    def _end(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._done = True
            if error is not None and not isinstance(error, StopAsyncIteration):
                self._span.set_attribute("bitnet.stream.interrupted", type(error).__name__)
            self._span.end()

    def __aiter__(self) -> _EndsSpan:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except BaseException as exc:
            self._end(exc)
            raise

    async def aclose(self) -> None:
        try:
            closer = getattr(self._inner, "aclose", None)
            if closer is not None:
                await closer()
        finally:
            self._end()


def install(app: QuartTrio, tracing: Tracing) -> None:
    """Register the request hooks (before the app's own ``after_request``, so the access log has the ids)."""

    @app.before_request
    async def _trace_start() -> None:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        bind_log_context(request_id=g.get("request_id"))
        if not tracing.enabled:
            return
        parent = tracing.extract({k.lower(): v for k, v in request.headers.items()})
        span = tracing.tracer.start_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "url.scheme": request.scheme,
                "user_agent.original": request.headers.get("User-Agent", ""),
                "bitnet.request_id": g.get("request_id") or "",
            },
        )
        g.trace_span = span
        g.trace_context = trace.set_span_in_context(span, parent)
        trace_id, span_id = trace_ids(g.trace_context)
        bind_log_context(trace_id=trace_id, span_id=span_id)

    @app.after_request
    async def _trace_finish(response: Response) -> Response:
        span: trace.Span | None = g.get("trace_span")
        if span is None:
            return response
        g.trace_span = None
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(Status(StatusCode.ERROR))
        if g.get("org_id"):
            span.set_attribute("bitnet.org_id", str(g.org_id))
        for name, value in tracing.inject(g.trace_context).items():
            response.headers[name] = value
        body = response.response
        if isinstance(body, IterableBody):  # SSE and downloads: the span lasts until the last byte
            body.iter = _EndsSpan(body.iter, span)
        else:
            span.end()
        return response

    @app.teardown_request
    async def _trace_teardown(exc: BaseException | None) -> None:
        span: trace.Span | None = g.get("trace_span")  # after_request did not run (an exception)
        if span is not None:
            g.trace_span = None
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR))
            span.end()
