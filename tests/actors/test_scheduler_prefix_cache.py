"""The scheduler with the model's prefix cache on: an organization reuses its own cached prompt blocks and never
another's (scope ``org``), the platform scope shares them, ``off`` uses none, ``Finished.cached_tokens`` reports
the reuse, the statistics carry the cache's counters, and the tokens are those generated without the cache."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
import trio

from actors.scheduler import Event, Finished, GenerationRequest, Scheduler, Token
from bitnet_actor.engine import Model, SamplingParams
from bitnet_actor.engine.prefix_cache import BLOCK_TOKENS as B
from bitnet_actor.engine.synthetic import SHAPES, random_weights

A, C = uuid.UUID(int=1), uuid.UUID(int=3)
CFG = dataclasses.replace(
    SHAPES["2b4t"], hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=96,
    vocab_size=300, context_length=256, tie_word_embeddings=False,
)  # fmt: skip
SYSTEM = [int(t) for t in np.random.default_rng(0).integers(0, 300, 4 * B + 3)]  # 4 full blocks


def _prompt(turn: int) -> list[int]:
    return SYSTEM + [int(t) for t in np.random.default_rng(turn).integers(0, 300, 9)]


@pytest.fixture
def model() -> Model:
    m = Model(random_weights(CFG, seed=1))
    m.set_prefix_cache(1 << 22)
    return m


async def generate(scheduler: Scheduler, org: uuid.UUID, prompt: list[int]) -> tuple[list[int], Finished]:
    """One request, alone, to its end: its token ids and its Finished event."""
    send, recv = trio.open_memory_channel[Event](16)  # 16: room for every event of 6 tokens
    params = SamplingParams(max_tokens=6, ignore_eos=True, temperature=0)
    scheduler.submit_nowait(GenerationRequest(org_id=org, prompt_ids=prompt, params=params, reply=send))
    events = [event async for event in recv]
    assert isinstance(events[-1], Finished), events[-1]
    return [e.token_id for e in events if isinstance(e, Token)], events[-1]


async def cached_tokens(scheduler: Scheduler, requests: list[tuple[uuid.UUID, list[int]]]) -> list[int]:
    """Run the requests one after another; the cached tokens each reported."""
    out = []
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        for org, prompt in requests:
            _, finished = await generate(scheduler, org, prompt)
            assert finished.prompt_tokens == len(prompt)
            out.append(finished.cached_tokens)
        scheduler.close()
    return out


async def test_an_organization_reuses_its_own_blocks_only(model: Model) -> None:
    scheduler = Scheduler(model)
    got = await cached_tokens(scheduler, [(A, _prompt(1)), (A, _prompt(2)), (C, _prompt(3)), (C, _prompt(4))])
    assert got == [0, 4 * B, 0, 4 * B]  # C never hits A's blocks; it caches its own
    stats = scheduler.statistics().prefix_cache
    assert stats is not None
    assert (stats.queried_tokens, stats.hit_tokens) == (4 * len(_prompt(1)), 8 * B)
    assert stats.blocks == 8 and stats.bytes == model.prefix_cache.nbytes > 0  # type: ignore[union-attr]


async def test_the_platform_scope_shares_blocks_across_organizations(model: Model) -> None:
    got = await cached_tokens(Scheduler(model, prefix_scope="platform"), [(A, _prompt(1)), (C, _prompt(2))])
    assert got == [0, 4 * B]


async def test_scope_off_uses_no_blocks(model: Model) -> None:
    scheduler = Scheduler(model, prefix_scope="off")
    assert await cached_tokens(scheduler, [(A, _prompt(1)), (A, _prompt(1))]) == [0, 0]
    stats = scheduler.statistics().prefix_cache
    assert stats is not None and (stats.queried_tokens, stats.blocks) == (0, 0)


async def test_no_prefix_cache_no_statistics() -> None:
    scheduler = Scheduler(Model(random_weights(CFG, seed=1)))
    assert await cached_tokens(scheduler, [(A, _prompt(1)), (A, _prompt(1))]) == [0, 0]
    assert scheduler.statistics().prefix_cache is None


async def test_tokens_are_those_generated_without_the_cache(model: Model) -> None:
    plain = Scheduler(Model(random_weights(CFG, seed=1)))
    cached = Scheduler(model)
    for scheduler in (plain, cached):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            outputs = [await generate(scheduler, A, _prompt(turn)) for turn in (1, 2, 3)]
            scheduler.close()
        if scheduler is plain:
            want = [tokens for tokens, _ in outputs]
    assert [tokens for tokens, _ in outputs] == want
    assert [f.cached_tokens for _, f in outputs] == [0, 4 * B, 4 * B]
    assert len({t for tokens in want for t in tokens}) > 3  # not one token repeated


def test_an_unknown_scope_is_refused(model: Model) -> None:
    with pytest.raises(ValueError, match="prefix_scope"):
        Scheduler(model, prefix_scope="tenant")
