"""The metrics read from the running actors at scrape time: the model cache's counters and memory gauges."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from actors.model_cache import ModelCacheStatistics
from bitnet_actor.observability import Metrics


def samples(metrics: Metrics) -> dict[str, float]:
    text = metrics.render().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_model_cache_counters_and_memory_are_exported() -> None:
    metrics = Metrics()
    assert "bitnet_model_cache_misses_total" not in samples(metrics)  # no cache attached: nothing to read
    stats = ModelCacheStatistics(
        loaded=("a",), bytes=300, budget=1000, loads=2, evictions=1, hits=7, misses=3, failures=1
    )
    metrics.live = lambda: {"cache": stats}
    got = samples(metrics)
    assert got["bitnet_model_loads_total"] == 2
    assert got["bitnet_model_evictions_total"] == 1
    assert got["bitnet_model_cache_hits_total"] == 7
    assert got["bitnet_model_cache_misses_total"] == 3
    assert got["bitnet_model_load_failures_total"] == 1
    assert got["bitnet_model_memory_bytes"] == 300
    assert got["bitnet_model_memory_budget_bytes"] == 1000
