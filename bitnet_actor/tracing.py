"""Traces: OpenTelemetry spans for each request, exported over OTLP/HTTP when configured, free otherwise.

A request's trace (its parent taken from a W3C ``traceparent`` header when the caller sends one, and given back
in the response's ``traceparent`` header)::

    POST /v1/chat/completions         SERVER span, from the request's arrival to its last byte
      auth                            the API key's (or session's) check
      rate_limit                      the limits' admission (Redis)
      chat <model>                    the generation (GenAI semantic conventions: gen_ai.* attributes)
        queue_wait                    waiting for a place in the model's batch
        prefill                       until the first token
        decode                        first to last token; an event per 16 tokens (gen_ai.decode.tokens)

The generation's child spans are written when it ends, with the times it recorded (the scheduler that runs it is
another task: nothing is traced from inside the batched decode loop, so tracing never slows it).

Configuration: ``BITNET_OTEL_ENDPOINT`` (a collector's base URL; ``/v1/traces`` is appended) or the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables (with ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS`` as the SDK reads them);
``OTEL_SDK_DISABLED=true`` turns it off. With none of them, :class:`Tracing` is off: the hooks check
:attr:`Tracing.enabled` and do nothing else.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from bitnet_actor.config import Settings

__all__ = ["Tracing", "epoch_ns", "trace_ids"]

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()  # one mapping per process: span times stay ordered


def epoch_ns(perf: float) -> int:
    """A ``time.perf_counter()`` reading as nanoseconds since the epoch (span times)."""
    return int(perf * 1e9) + _EPOCH_OFFSET_NS


def trace_ids(context: Context | None = None) -> tuple[str | None, str | None]:
    """The (trace id, span id) of the current span, or of ``context``'s, as hex; (None, None) if none."""
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None, None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


class Tracing:
    """The service's tracer: a real one over ``provider``, or off (``provider`` None)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = provider.get_tracer("bitnet_actor") if provider is not None else trace.NoOpTracer()

    @classmethod
    def with_exporter(cls, exporter: SpanExporter, *, service: str = "bitnet-actor", batch: bool = True) -> Tracing:
        """Tracing into ``exporter`` (batched in a background thread, or synchronously for tests)."""
        from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        attributes: dict[str, Any] = {SERVICE_INSTANCE_ID: f"{os.uname().nodename}:{os.getpid()}"}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes[SERVICE_NAME] = service
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider)

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Tracing:
        """OTLP/HTTP export when an endpoint is configured (see the module docstring), else off."""
        env = os.environ if environ is None else environ
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        endpoint = settings.otel_endpoint.rstrip("/")
        if not endpoint and not any(env.get(name) for name in _ENDPOINT_VARS):
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # With no BITNET_OTEL_ENDPOINT the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces" if endpoint else None)
        log.info("tracing: exporting spans over OTLP/HTTP to %s", endpoint or "the OTEL_EXPORTER_OTLP_* endpoint")
        return cls.with_exporter(exporter)

    def extract(self, headers: Mapping[str, str]) -> Context:
        """The parent context a request's ``traceparent`` / ``tracestate`` headers carry (empty if none)."""
        return _PROPAGATOR.extract(dict(headers))

    def inject(self, context: Context) -> dict[str, str]:
        """The ``traceparent`` (and ``tracestate``) headers of ``context``'s span."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=context)
        return carrier

    def shutdown(self) -> None:
        """Flush and stop the exporter (at most a few seconds); nothing when off."""
        if self.provider is not None:
            self.provider.force_flush(timeout_millis=5000)
            self.provider.shutdown()
