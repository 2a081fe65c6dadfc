"""Automatic prefix caching on tiny synthetic models: block keys, hits and misses, the one prompt token always
left to compute, LRU eviction within a small budget that never strands a block, salts that never share, and
outputs identical with and without the cache (token ids, logprobs and the KV caches, bit for bit: every row of
a forward is computed independently of the other rows, so cached keys and values are the ones the sequence
would compute itself), with float32 and float16 caches, chunked prefill, batches, and on OpenCL devices."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from bitnet_actor.engine import Model, SamplingParams, ops
from bitnet_actor.engine.prefix_cache import BLOCK_TOKENS, PrefixCache, block_keys
from bitnet_actor.engine.synthetic import SHAPES, random_weights
from tests.kernels_opencl.devices import context, device_params

B = BLOCK_TOKENS
VOCAB = 500
CFG = dataclasses.replace(
    SHAPES["2b4t"], hidden_size=100, num_layers=3, num_heads=6, num_kv_heads=2, head_dim=18, intermediate_size=70,
    vocab_size=VOCAB, context_length=256, tie_word_embeddings=False,
)  # fmt: skip  # odd widths, GQA; an untied output layer, so that greedy outputs are not one token repeated
BLOCK_BYTES = 2 * CFG.num_layers * CFG.num_kv_heads * B * CFG.head_dim * 4  # float32


@pytest.fixture(scope="module")
def weights() -> Any:
    return random_weights(CFG, seed=3)


def _model(weights: Any, budget: int = 1 << 24, **kw: Any) -> Model:
    model = Model(weights, **kw)
    if budget:
        model.set_prefix_cache(budget)
    return model


def _ids(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, VOCAB, n)]


SYSTEM = _ids(1, 3 * B + 5)  # a shared "system prompt": 3 full blocks and a partial one
PROMPTS = [SYSTEM + _ids(10 + i, n) for i, n in enumerate((9, 27, 1, 40))]


def _params(n: int = 8) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=3)


def _run(model: Model, prompt: list[int], salt: bytes | None, *, chunk: int = 256) -> tuple[Any, ...]:
    """Generate alone; return the token ids, logprobs, top logprobs, cached tokens and the prompt's KV cache."""
    seq = model.new_sequence(prompt, _params(), cache_salt=salt)
    outs = []
    kv = None
    while not seq.finished:
        outs += [o for o in model.step([seq], prefill_chunk=chunk) if o.token_id is not None]
        if kv is None and not seq.prefilling:
            kv = (np.array(seq.k_cache[:, :, : len(prompt)]), np.array(seq.v_cache[:, :, : len(prompt)]))
    return (
        [o.token_id for o in outs],
        [o.logprob for o in outs],
        [o.top_logprobs for o in outs],
        seq.cached_tokens,
        kv,
    )


# --- keys ---------------------------------------------------------------------------------------------------


def test_block_keys_chain_over_salt_kind_and_every_earlier_token() -> None:
    prompt = np.array(_ids(2, 3 * B + 7), dtype=np.int64)
    keys = block_keys(prompt, b"org-a", "float32")
    assert len(keys) == 3 and all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    assert len(set(keys)) == 3
    assert block_keys(prompt, b"org-a", "float32") == keys  # hashlib: the same in every process
    assert block_keys(prompt[: 2 * B], b"org-a", "float32") == keys[:2]  # a block names its whole prefix
    assert block_keys(prompt[: 2 * B - 1], b"org-a", "float32") == keys[:1]  # only full blocks
    assert block_keys(prompt[: B - 1], b"org-a", "float32") == []
    changed = prompt.copy()
    changed[B + 3] += 1
    other = block_keys(changed, b"org-a", "float32")
    assert other[0] == keys[0] and other[1] != keys[1] and other[2] != keys[2]  # the change and every later block
    for salt, kind in ((b"org-b", "float32"), (b"org-a", "float16"), (b"", "org-afloat32"), (b"org-afloat32", "")):
        assert not set(block_keys(prompt, salt, kind)) & set(keys), (salt, kind)
    assert len(block_keys(prompt, b"s", "k", block_tokens=8)) == (3 * B + 7) // 8


# --- hits, misses, the last token ----------------------------------------------------------------------------


def test_hits_leave_at_least_one_prompt_token_to_compute(weights: Any) -> None:
    model = _model(weights)
    cache = model.prefix_cache
    assert cache is not None
    first = _run(model, SYSTEM, b"a")
    assert first[3] == 0  # a miss
    stats = cache.statistics()
    assert (stats.blocks, stats.bytes, stats.inserted_blocks) == (3, 3 * BLOCK_BYTES, 3)
    assert (stats.queried_tokens, stats.hit_tokens) == (len(SYSTEM), 0)
    assert _run(model, SYSTEM, b"a")[3] == 3 * B  # the whole cached prefix: 5 tokens left
    assert _run(model, SYSTEM[: 3 * B], b"a")[3] == 2 * B  # a prompt of exactly 3 blocks computes its last one
    assert _run(model, SYSTEM[: 3 * B + 1], b"a")[3] == 3 * B  # one token to compute
    assert _run(model, SYSTEM[: B - 1], b"a")[3] == 0  # no full block
    diverging = [*SYSTEM[:B], (SYSTEM[B] + 1) % VOCAB, *SYSTEM[B + 1 :]]
    assert _run(model, diverging, b"a")[3] == B  # block 0 cached, block 1 differs
    stats = cache.statistics()
    assert stats.hit_tokens == 3 * B + 2 * B + 3 * B + B
    assert stats.queried_tokens == 3 * len(SYSTEM) + 3 * B + 3 * B + 1 + B - 1
    assert stats.blocks == 5  # the diverging prompt added its blocks 1 and 2 under the shared block 0
    assert cache.clear() == 5 * BLOCK_BYTES
    assert cache.statistics().blocks == 0 and _run(model, SYSTEM, b"a")[3] == 0


def test_no_salt_or_no_cache_means_no_reuse(weights: Any) -> None:
    model = _model(weights)
    _run(model, SYSTEM, None)
    assert model.prefix_cache is not None and model.prefix_cache.statistics().blocks == 0
    _run(model, SYSTEM, b"a")
    assert _run(model, SYSTEM, None)[3] == 0
    model.set_prefix_cache(0)
    assert model.prefix_cache is None
    assert _run(model, SYSTEM, b"a")[3] == 0
    with pytest.raises(ValueError, match="budget"):
        model.set_prefix_cache(-1)


def test_salts_never_share_blocks(weights: Any) -> None:
    model = _model(weights)
    _run(model, SYSTEM, b"org-a")
    assert _run(model, SYSTEM, b"org-b")[3] == 0  # another organization: a miss, then cached under its own salt
    assert _run(model, SYSTEM, b"org-b")[3] == 3 * B
    assert _run(model, SYSTEM, b"org-a")[3] == 3 * B
    assert model.prefix_cache is not None and model.prefix_cache.statistics().blocks == 6


def test_f32_and_f16_caches_never_share_blocks(weights: Any) -> None:
    model = _model(weights)
    _run(model, SYSTEM, b"a")
    model.set_kv_cache("f16")
    assert _run(model, SYSTEM, b"a")[3] == 0
    assert _run(model, SYSTEM, b"a")[3] == 3 * B
    assert model.prefix_cache is not None and model.prefix_cache.statistics().bytes == 3 * BLOCK_BYTES * 3 // 2


def test_blocks_are_copies_never_views_of_a_sequence_cache() -> None:
    # one layer and one KV head: a block's slice of the cache is contiguous, where a view would be the cheap answer
    model = Model(random_weights(dataclasses.replace(CFG, num_layers=1, num_kv_heads=1, num_heads=2), seed=0))
    model.set_prefix_cache(1 << 20)
    seq = model.new_sequence(SYSTEM, _params(), cache_salt=b"a")
    model.step([seq])
    assert model.prefix_cache is not None
    blocks = list(model.prefix_cache._blocks.values())
    assert len(blocks) == 3
    assert not any(np.shares_memory(b.k, seq.k_cache) or np.shares_memory(b.v, seq.v_cache) for b in blocks)


# --- eviction ------------------------------------------------------------------------------------------------


def _whole(cache: PrefixCache) -> None:
    """Every cached block's parent is cached: nothing is stranded."""
    for block in cache._blocks.values():
        assert block.parent is None or cache._blocks.get(block.parent.key) is block.parent
    assert cache.nbytes == sum(b.nbytes for b in cache._blocks.values()) <= cache.budget_bytes


def test_lru_eviction_within_a_small_budget(weights: Any) -> None:
    model = _model(weights, budget=4 * BLOCK_BYTES)
    cache = model.prefix_cache
    assert cache is not None
    a, b, c = (_ids(20 + i, 2 * B + 1) for i in range(3))  # two full blocks each
    _run(model, a, b"s")
    _run(model, b, b"s")
    assert cache.statistics().blocks == 4
    assert _run(model, a, b"s")[3] == 2 * B  # a is now more recent than b
    _run(model, c, b"s")  # 6 blocks do not fit: b's leaf goes first, then b's root (never a root before its leaf)
    _whole(cache)
    stats = cache.statistics()
    assert (stats.blocks, stats.bytes, stats.evicted_blocks) == (4, 4 * BLOCK_BYTES, 2)
    assert _run(model, a, b"s")[3] == 2 * B
    assert _run(model, b, b"s")[3] == 0  # evicted: cached again in place of c, the least recently used now
    _whole(cache)
    assert _run(model, a, b"s")[3] == 2 * B
    assert _run(model, c, b"s")[3] == 0
    assert cache.statistics().evicted_blocks == 6
    # a chain longer than the budget keeps its first blocks (evicting everything else), never a stranded tail
    long = _ids(30, 7 * B + 1)
    _run(model, long, b"s")
    _whole(cache)
    assert cache.statistics().blocks == 4
    assert _run(model, long, b"s")[3] == 4 * B
    model.set_prefix_cache(BLOCK_BYTES - 1)  # not even one block fits: nothing is cached
    _run(model, long, b"s")
    assert model.prefix_cache is not None and model.prefix_cache.statistics().blocks == 0


def test_a_shared_root_outlives_its_branches(weights: Any) -> None:
    model = _model(weights, budget=4 * BLOCK_BYTES)
    cache = model.prefix_cache
    assert cache is not None
    root = _ids(40, B)
    branches = [root + _ids(41 + i, B + 1) for i in range(6)]  # one shared block, one block of their own
    for prompt in branches:
        _run(model, prompt, b"s")
        _whole(cache)
    assert _run(model, root + _ids(99, 3), b"s")[3] == B  # the root, touched by every branch, was never evicted
    assert [_run(model, p, b"s")[3] for p in branches[-3:]] == [2 * B] * 3
    assert cache.statistics().evicted_blocks == 3


# --- identical outputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv", ["f32", "f16"])
@pytest.mark.parametrize("chunk", [5, B, 256])
def test_greedy_identical_with_and_without_the_cache(weights: Any, kv: str, chunk: int) -> None:
    plain = _model(weights, budget=0, kv_cache=kv)
    cached = _model(weights, kv_cache=kv)
    # the system prompt's 3 blocks are cached by the first; the repeated second prompt finds 4 of its own 5
    for prompt, hit in zip(PROMPTS + PROMPTS[:2], [0, 3 * B, 3 * B, 3 * B, 3 * B, 4 * B], strict=True):
        want = _run(plain, prompt, b"a", chunk=chunk)
        got = _run(cached, prompt, b"a", chunk=chunk)
        assert got[3] == hit
        assert got[0] == want[0] and len(set(got[0])) > 2  # the same tokens (and not one token repeated)
        assert got[1] == want[1] and got[2] == want[2]  # the same logprobs, bit for bit
        for mine, theirs in zip(got[4], want[4], strict=True):  # and the same keys and values
            np.testing.assert_array_equal(mine, theirs)


@pytest.mark.skipif(not (ops.FAST_OPS and ops.FAST_KERNELS), reason="the compiled kernels and engine ops are not built")
def test_greedy_identical_on_the_per_op_path(weights: Any) -> None:
    plain = _model(weights, budget=0)
    cached = _model(weights)
    cached.set_compiled_layers(False)
    for prompt in PROMPTS:
        assert _run(cached, prompt, b"a", chunk=7)[:3] == _run(plain, prompt, b"a")[:3]
    assert cached.prefix_cache is not None and cached.prefix_cache.statistics().hit_tokens == 3 * 3 * B


def test_a_batch_with_hits_equals_solo_runs(weights: Any) -> None:
    plain = _model(weights, budget=0)
    alone = [_run(plain, p, None)[:3] for p in PROMPTS]
    model = _model(weights)
    _run(model, SYSTEM, b"a")  # the prefix is cached
    seqs = [model.new_sequence(p, _params(), cache_salt=b"a") for p in PROMPTS]
    outs: dict[int, list[Any]] = {s.id: [] for s in seqs}
    running: list[Any] = []
    for step in range(200):
        if step < len(seqs):  # staggered: each joins a batch of prefills and decodes
            running.append(seqs[step])
        if all(s.finished for s in seqs):
            break
        for o in model.step(running, prefill_chunk=6):
            if o.token_id is not None:
                outs[o.sequence.id].append(o)
    assert [s.cached_tokens for s in seqs] == [3 * B] * len(PROMPTS)
    got = [([o.token_id for o in outs[s.id]], [o.logprob for o in outs[s.id]], [o.top_logprobs for o in outs[s.id]])
           for s in seqs]  # fmt: skip
    assert got == alone


# --- OpenCL --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", device_params())
def test_opencl_blocks_live_on_the_device_and_give_the_same_tokens(weights: Any, selector: str) -> None:
    plain = Model(weights, opencl=context(selector))
    cached = Model(weights, opencl=context(selector))
    cached.set_prefix_cache(1 << 24)
    cache = cached.prefix_cache
    assert cache is not None
    for i, prompt in enumerate(PROMPTS):
        seq_plain = plain.new_sequence(prompt, _params(), cache_salt=b"a")
        seq = cached.new_sequence(prompt, _params(), cache_salt=b"a")
        for s, m in ((seq_plain, plain), (seq, cached)):
            while not s.finished:
                m.step([s], prefill_chunk=11)
        assert seq.cached_tokens == (0 if i == 0 else 3 * B)
        assert seq.output_ids == seq_plain.output_ids
    assert cache.statistics().bytes == cache.statistics().blocks * BLOCK_BYTES
    assert not isinstance(next(iter(cache._blocks.values())).k, np.ndarray)  # a device buffer
