"""Logs and metrics.

- Logs: one JSON object per line on stderr (``JsonFormatter``), every line with the same keys (docs/logging.md):
  ``timestamp, level, service, logger, message, request_id, trace_id, span_id, org_id, latency_ms, error``
  (null when they don't apply) and ``attrs`` for anything else a line carries. The request's ids come from
  :func:`bind_log_context` (set by the HTTP hooks and the authentication); the access log is the logger
  ``bitnet_actor.access`` with one line per request. Prompts, completions, keys and secrets are never logged.
- Metrics: ``Metrics`` owns one Prometheus registry per service instance (so tests can run several), with
  process and platform collectors and the HTTP request counter / latency histogram. Labels are route
  templates and status codes, never tenant ids or raw paths (unbounded cardinality).
"""

from __future__ import annotations

import contextvars
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
    """Gauges read at scrape time from the running actors (``Metrics.live``): running / waiting requests, KV
    cache bytes and the prefix cache's counters per model, and the model cache's counters."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        live = self.metrics.live() if self.metrics.live is not None else {}
        running = GaugeMetricFamily("bitnet_requests_running", "Sequences in a model's batch.", labels=["model"])
        waiting = GaugeMetricFamily("bitnet_requests_waiting", "Requests queued for a model.", labels=["model"])
        kv = GaugeMetricFamily("bitnet_kv_cache_bytes", "KV cache bytes held by running sequences.", labels=["model"])
        prefix = _PrefixCacheFamilies()
        for name, stats in live.get("schedulers", {}).items():
            running.add_metric([name], stats.running)
            waiting.add_metric([name], stats.waiting)
            kv.add_metric([name], stats.kv_bytes)
            if getattr(stats, "prefix_cache", None) is not None:  # None: that model's prefix cache is off
                prefix.add(name, stats.prefix_cache)
        yield from (running, waiting, kv)
        yield from prefix.families()
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
            yield CounterMetricFamily(
                "bitnet_model_cache_misses",
                "Requests that found their model not loaded (they loaded it or waited for its load).",
                value=cache.misses,
            )
            yield CounterMetricFamily("bitnet_model_load_failures", "Model loads that failed.", value=cache.failures)
            yield GaugeMetricFamily("bitnet_model_memory_bytes", "Bytes of loaded models.", value=cache.bytes)
            yield GaugeMetricFamily(
                "bitnet_model_memory_budget_bytes",
                "The models' memory budget (BITNET_MODEL_MEMORY).",
                value=cache.budget,
            )


class _PrefixCacheFamilies:
    """The prefix cache's series per model (only for models whose prefix cache is on)."""

    def __init__(self) -> None:
        self.queried = CounterMetricFamily(
            "bitnet_prefix_cache_queried_tokens",
            "Prompt tokens looked up in the prefix cache (hit rate: hit_tokens / queried_tokens).",
            labels=["model"],
        )
        self.hits = CounterMetricFamily(
            "bitnet_prefix_cache_hit_tokens",
            "Prompt tokens found in the prefix cache: their keys and values were copied, not computed.",
            labels=["model"],
        )
        self.evictions = CounterMetricFamily(
            "bitnet_prefix_cache_evictions",
            "Prefix cache blocks evicted (least recently used) to stay within its budget.",
            labels=["model"],
        )
        self.bytes = GaugeMetricFamily(
            "bitnet_prefix_cache_bytes",
            "Bytes of cached prompt blocks (counted in the model memory).",
            labels=["model"],
        )
        self.budget = GaugeMetricFamily(
            "bitnet_prefix_cache_budget_bytes",
            "The prefix cache's budget per model (BITNET_PREFIX_CACHE_MEMORY).",
            labels=["model"],
        )

    def add(self, model: str, stats: Any) -> None:
        self.queried.add_metric([model], stats.queried_tokens)
        self.hits.add_metric([model], stats.hit_tokens)
        self.evictions.add_metric([model], stats.evicted_blocks)
        self.bytes.add_metric([model], stats.bytes)
        self.budget.add_metric([model], stats.budget_bytes)

    def families(self) -> tuple[Any, ...]:
        return (self.queried, self.hits, self.evictions, self.bytes, self.budget)


# Fields of LogRecord that are not "extra" data.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

SERVICE = "bitnet-actor"
LOG_KEYS = (
    "timestamp", "level", "service", "logger", "message", "request_id", "trace_id", "span_id", "org_id",
    "latency_ms", "error", "attrs",
)  # fmt: skip
"""The keys of every log line, in order (docs/logging.md)."""
_CONTEXT_KEYS = ("request_id", "trace_id", "span_id", "org_id")
_LOG_CONTEXT: contextvars.ContextVar[dict[str, str | None]] = contextvars.ContextVar("bitnet_log_context")


def bind_log_context(**values: str | None) -> None:
    """Attach ids (``request_id``, ``trace_id``, ``span_id``, ``org_id``) to the log lines of the current task
    from now on (a request's task: its lines carry them without passing them around)."""
    current = _LOG_CONTEXT.get(None)
    merged = {**(current or {}), **{k: v for k, v in values.items() if k in _CONTEXT_KEYS}}
    _LOG_CONTEXT.set(merged)


def clear_log_context() -> None:
    """Forget the current task's ids (a new request on a reused task)."""
    _LOG_CONTEXT.set({})


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line with :data:`LOG_KEYS`: the task's ids from :func:`bind_log_context`
    (or the record's own ``extra=`` of the same names), ``latency_ms`` and ``error`` from ``extra=`` or the
    exception, and the other ``extra=`` fields under ``attrs``."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line."""
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        context = _LOG_CONTEXT.get(None) or {}
        error = extra.pop("error", None)
        if record.exc_info:
            error = self.formatException(record.exc_info)
        out: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": SERVICE,
            "logger": record.name,
            "message": record.getMessage(),
            **{key: extra.pop(key, None) or context.get(key) for key in _CONTEXT_KEYS},
            "latency_ms": extra.pop("latency_ms", None),
            "error": error,
            "attrs": extra,
        }
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
        self.response_cache_hits = Counter(
            "bitnet_response_cache_hits",
            "Completions answered from an organization's response cache (no generation), by model.",
            ["model"],
            registry=self.registry,
        )
        self.response_cache_misses = Counter(
            "bitnet_response_cache_misses",
            "Cacheable completions not found in the response cache (generated, then kept), by model.",
            ["model"],
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
