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


def test_prefix_cache_series_per_model() -> None:
    from actors.scheduler import SchedulerStatistics
    from bitnet_actor.engine.prefix_cache import PrefixCacheStatistics

    prefix = PrefixCacheStatistics(
        block_tokens=16, budget_bytes=4096, bytes=2048, blocks=2, queried_tokens=100, hit_tokens=64,
        inserted_blocks=6, evicted_blocks=4,
    )  # fmt: skip
    on = SchedulerStatistics(0, 0, 5, 9, 0, 0, 0, prefix)
    off = SchedulerStatistics(0, 0, 5, 9, 0, 0, 0)
    metrics = Metrics()
    metrics.live = lambda: {"schedulers": {"on": on, "off": off}}
    text = metrics.render().decode()
    got = {(s.name, s.labels.get("model")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("bitnet_prefix_cache_queried_tokens_total", "on")] == 100
    assert got[("bitnet_prefix_cache_hit_tokens_total", "on")] == 64
    assert got[("bitnet_prefix_cache_evictions_total", "on")] == 4
    assert got[("bitnet_prefix_cache_bytes", "on")] == 2048
    assert got[("bitnet_prefix_cache_budget_bytes", "on")] == 4096
    assert not [key for key in got if key[0].startswith("bitnet_prefix_cache") and key[1] == "off"]
