"""The model cache with real (tiny) models: loading once for concurrent callers, failures, LRU eviction."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.model_cache import ModelCache, ModelCapacityError, ModelLoadFailedError, UnknownModelError

pytest.importorskip("transformers", reason="transformers builds the test models")


@pytest.fixture(scope="module")
def model_dirs() -> Iterator[tuple[Path, Path]]:
    from tests.api.served import build_model_dir

    root = Path(tempfile.mkdtemp(prefix="bitnet-cache-"))
    yield build_model_dir(root / "a", seed=1), build_model_dir(root / "b", seed=2)
    shutil.rmtree(root, ignore_errors=True)


def counting_loader(calls: list[str]):
    from bitnet_actor.engine import load_model

    def load(path: str):
        calls.append(path)
        return load_model(path)

    return load


async def test_concurrent_requests_share_one_load(model_dirs: tuple[Path, Path], nursery: trio.Nursery) -> None:
    calls: list[str] = []
    cache = ModelCache(budget_bytes=2**30, loader=counting_loader(calls))
    cache.register("a", str(model_dirs[0]))
    await nursery.start(cache.run)
    leases = []

    async def get() -> None:
        leases.append(await cache.acquire("a"))

    async with trio.open_nursery() as inner:
        for _ in range(5):
            inner.start_soon(get)
    assert calls == [str(model_dirs[0])]
    assert len({id(lease.model) for lease in leases}) == 1
    stats = cache.statistics()
    # None of the five found "a" loaded: one loaded it, four waited for that load.
    assert (stats.loads, stats.hits, stats.misses) == (1, 0, 5)
    for lease in leases:
        cache.release(lease)
    cache.release(await cache.acquire("a"))
    stats = cache.statistics()
    assert (stats.loads, stats.hits, stats.misses) == (1, 1, 5)
    with pytest.raises(UnknownModelError):
        await cache.acquire("nope")


async def test_failed_load_reaches_every_waiter_and_is_retried(
    tmp_path: Path, model_dirs: tuple[Path, Path], nursery: trio.Nursery
) -> None:
    calls: list[str] = []
    cache = ModelCache(budget_bytes=2**30, loader=counting_loader(calls))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cache.register("broken", str(broken))
    await nursery.start(cache.run)
    errors: list[Exception] = []

    async def get() -> None:
        try:
            await cache.acquire("broken")
        except ModelLoadFailedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as inner:
        for _ in range(3):
            inner.start_soon(get)
    assert len(errors) == 3
    assert "config.json" in str(errors[0])
    assert len(calls) == 1  # one load for the three waiters
    assert (cache.statistics().misses, cache.statistics().failures) == (3, 1)
    shutil.rmtree(broken)
    shutil.copytree(model_dirs[0], broken)  # fixed on disk: the next request loads it
    lease = await cache.acquire("broken")
    assert lease.model is not None
    assert len(calls) == 2


async def test_lru_eviction_pinning_and_capacity(model_dirs: tuple[Path, Path], nursery: trio.Nursery) -> None:
    from bitnet_actor.engine import load_model

    one = load_model(str(model_dirs[0])).nbytes
    cache = ModelCache(budget_bytes=int(one * 1.5), loader=load_model)  # room for one model only
    cache.register("a", str(model_dirs[0]))
    cache.register("b", str(model_dirs[1]))
    await nursery.start(cache.run)
    lease_a = await cache.acquire("a")
    with pytest.raises(ModelCapacityError, match="busy or pinned"):
        await cache.acquire("b")  # "a" is in use: never evicted
    cache.release(lease_a)
    lease_b = await cache.acquire("b")  # now "a" is idle and goes
    assert cache.statistics().loaded == ("b",)
    assert cache.statistics().evictions == 1
    cache.release(lease_b)
    await cache.pin("b")
    with pytest.raises(ModelCapacityError):
        await cache.acquire("a")  # "b" is pinned
    small = ModelCache(budget_bytes=one // 10, loader=load_model)
    small.register("a", str(model_dirs[0]))
    nursery.start_soon(small.run)
    await trio.lowlevel.checkpoint()
    with pytest.raises(ModelCapacityError, match="memory budget"):
        await small.acquire("a")


async def test_prefix_caches_count_in_the_budget_and_go_before_any_model(
    model_dirs: tuple[Path, Path], nursery: trio.Nursery
) -> None:
    from bitnet_actor.engine import SamplingParams, load_model

    def load(path: str) -> Any:
        model = load_model(path)
        model.set_prefix_cache(2**30)
        return model

    one = load_model(str(model_dirs[0])).nbytes
    cache = ModelCache(budget_bytes=2**30, loader=load)
    cache.register("a", str(model_dirs[0]))
    cache.register("b", str(model_dirs[1]))
    await nursery.start(cache.run)
    lease = await cache.acquire("a")  # held: "a" stays busy
    seq = lease.model.new_sequence(list(range(3, 203)), SamplingParams(max_tokens=1), cache_salt=b"org")
    while not seq.finished:
        lease.model.step([seq])
    prefix = cache.statistics().prefix_cache_bytes
    assert prefix > 0 and prefix == lease.model.prefix_cache.nbytes  # type: ignore[union-attr]
    # Room for both models but not for their prefix caches too: the caches go, no model is evicted.
    cache.budget_bytes = 2 * one + prefix // 2
    cache.release(await cache.acquire("b"))
    stats = cache.statistics()
    assert (stats.loaded, stats.evictions, stats.prefix_cache_bytes) == (("a", "b"), 0, 0)
    cache.release(lease)
