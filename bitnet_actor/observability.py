"""Logs and metrics.

- Logs: one JSON object per line on stderr (``JsonFormatter``); the access log is the logger
  ``bitnet_actor.access`` with one line per request (request id, method, route, status, latency).
- Metrics: ``Metrics`` owns one Prometheus registry per service instance (so tests can run several), with
  process and platform collectors and the HTTP request counter / latency histogram. Labels are route
  templates and status codes, never tenant ids or raw paths (unbounded cardinality).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["CONTENT_TYPE_LATEST", "JsonFormatter", "Metrics", "configure_logging"]


class _LiveCollector:
    """Gauges read at scrape time from the running actors (``Metrics.live``): running / waiting requests and
    KV cache bytes per model, and the model cache's counters."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        live = self.metrics.live() if self.metrics.live is not None else {}
        running = GaugeMetricFamily("bitnet_requests_running", "Sequences in a model's batch.", labels=["model"])
        waiting = GaugeMetricFamily("bitnet_requests_waiting", "Requests queued for a model.", labels=["model"])
        kv = GaugeMetricFamily("bitnet_kv_cache_bytes", "KV cache bytes held by running sequences.", labels=["model"])
        for name, stats in live.get("schedulers", {}).items():
            running.add_metric([name], stats.running)
            waiting.add_metric([name], stats.waiting)
            kv.add_metric([name], stats.kv_bytes)
        yield from (running, waiting, kv)
        restarts = CounterMetricFamily("bitnet_actor_restarts", "Restarts of supervised actors.", labels=["actor"])
        for stats in live.get("supervisors", []):
            restarts.add_metric([stats.name], stats.restarts)
        yield restarts
        tenants = live.get("tenants")
        if tenants is not None:
            yield GaugeMetricFamily("bitnet_tenants_active", "Organizations with cached state.", value=tenants.active)
            yield GaugeMetricFamily(
                "bitnet_tenant_requests_in_flight", "Inference requests admitted and not done.", value=tenants.in_flight
            )
        cache = live.get("cache")
        if cache is not None:
            yield CounterMetricFamily("bitnet_model_loads", "Models loaded.", value=cache.loads)
            yield CounterMetricFamily("bitnet_model_evictions", "Models evicted.", value=cache.evictions)
            yield CounterMetricFamily(
                "bitnet_model_cache_hits", "Requests that found their model loaded.", value=cache.hits
            )
            yield GaugeMetricFamily("bitnet_model_memory_bytes", "Bytes of loaded models.", value=cache.bytes)


# Fields of LogRecord that are not "extra" data.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, message, any ``extra=`` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """Send every log record to stderr as JSON lines at ``level``; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pgserver", "hypercorn.access", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Metrics:
    """The Prometheus registry of one service instance and the metrics the HTTP layer records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.http_requests = Counter(
            "bitnet_http_requests",
            "HTTP requests served, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "bitnet_http_request_duration_seconds",
            "Time from request start to response headers, by method and route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.http_in_flight = Gauge(
            "bitnet_http_requests_in_flight", "HTTP requests being handled now.", registry=self.registry
        )
        self.ready = Gauge("bitnet_ready", "1 when the last readiness check passed, else 0.", registry=self.registry)
        self.dependency_up = Gauge(
            "bitnet_dependency_up",
            "1 when a backing store (postgres, redis, object_store) answered the last readiness check, else 0.",
            ["dependency"],
            registry=self.registry,
        )
        self.jobs_queued = Gauge(
            "bitnet_jobs_queued",
            "Conversion jobs on the Redis stream bitnet:jobs, read at scrape time: state=waiting (not yet taken by"
            " a worker), state=pending (taken, not yet acknowledged: running or awaiting a retry). NaN when Redis"
            " did not answer.",
            ["state"],
            registry=self.registry,
        )

        latency = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
        self.ttft = Histogram(
            "bitnet_time_to_first_token_seconds",
            "Time from request to its first token.",
            ["model"],
            buckets=latency,
            registry=self.registry,
        )
        self.itl = Histogram(
            "bitnet_inter_token_latency_seconds",
            "Time between consecutive tokens of a stream.",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
            registry=self.registry,
        )
        self.e2e = Histogram(
            "bitnet_request_latency_seconds",
            "End-to-end latency of inference requests.",
            ["model"],
            buckets=latency,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "bitnet_queue_wait_seconds",
            "Time requests waited for a batch slot.",
            ["model"],
            buckets=latency,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "bitnet_batch_size",
            "Sequences per model step.",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "bitnet_step_seconds", "Duration of one model step.", ["model"], buckets=latency, registry=self.registry
        )
        self.prompt_tokens = Counter(
            "bitnet_prompt_tokens", "Prompt tokens processed.", ["model"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "bitnet_generation_tokens", "Tokens generated.", ["model"], registry=self.registry
        )
        self.finished = Counter(
            "bitnet_requests_finished",
            "Inference requests by finish reason.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.usage_events = Counter(
            "bitnet_usage_events", "Usage events written to the ledger (new ones only).", registry=self.registry
        )
        self.usage_spilled = Counter(
            "bitnet_usage_events_spilled",
            "Usage events written to the local spill file while PostgreSQL was away (replayed later).",
            registry=self.registry,
        )
        self.usage_buffered = Gauge(
            "bitnet_usage_events_buffered", "Usage events waiting in the meter's buffer.", registry=self.registry
        )
        self.ratelimited = Counter(
            "bitnet_ratelimit_rejections",
            "Requests refused with 429 by a rate limit (reason=rate) or the monthly quota (reason=quota).",
            ["reason"],
            registry=self.registry,
        )
        self.ratelimit_local = Counter(
            "bitnet_ratelimit_local_checks",
            "Rate-limit checks made in process because Redis was unavailable (the fail-open window).",
            registry=self.registry,
        )
        self.outbox_pending = Gauge(
            "bitnet_billing_outbox_pending", "Stripe meter events not yet accepted by Stripe.", registry=self.registry
        )
        self.live: Callable[[], dict[str, Any]] | None = None
        self.registry.register(_LiveCollector(self))

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
