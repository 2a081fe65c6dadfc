"""float16 KV caches: stored rounded to nearest, attention equal to the numpy path over the same caches, half the
memory, logits within float16 precision of the float32 caches, a batch still equal to solo runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from bitnet_actor.engine import SamplingParams, load_model, ops

if TYPE_CHECKING:
    from pathlib import Path

_ops = pytest.importorskip("bitnet_actor.engine._ops", reason="the compiled engine ops are not built")


def _block_inputs(seed: int, nh: int, nkv: int, hd: int, lens: list[int], starts: list[int], cap: int) -> dict:
    rng = np.random.default_rng(seed)
    m = sum(lens)
    caches = [(rng.standard_normal((nkv, cap, hd)) * 2).astype(np.float16) for _ in range(2 * len(lens))]
    pos = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens, strict=True)])
    ang = pos[:, None] * (1e-2 ** (np.arange(hd // 2) / (hd // 2)))[None, :]
    return {
        "qkv": rng.standard_normal((m, (nh + 2 * nkv) * hd)).astype(np.float32),
        "cos": np.cos(ang).astype(np.float32),
        "sin": np.sin(ang).astype(np.float32),
        "kcaches": caches[0::2],
        "vcaches": caches[1::2],
        "bounds": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        "starts": np.array(starts, dtype=np.int64),
    }


@pytest.mark.parametrize(("nh", "nkv", "hd"), [(4, 4, 16), (8, 2, 64), (6, 3, 20)])
def test_attn_block_f16_equals_numpy(nh: int, nkv: int, hd: int) -> None:
    lens, starts = [1, 5, 1], [37, 0, 200]  # decodes and a prefill chunk in one call
    fast = _block_inputs(1, nh, nkv, hd, lens, starts, 256)
    ref = {k: [c.copy() for c in v] if isinstance(v, list) else v.copy() for k, v in fast.items()}
    sub_w = np.random.default_rng(2).uniform(0.5, 1.5, nh * hd).astype(np.float32)
    out_fast = np.empty((sum(lens), nh * hd), dtype=np.float32)
    out_ref = np.empty_like(out_fast)
    _ops.attn_block(fast["qkv"], nh, nkv, hd, fast["cos"], fast["sin"], fast["kcaches"], fast["vcaches"],
                    fast["bounds"], fast["starts"], out_fast, sub_w, 1e-5)  # fmt: skip
    saved, ops._fast = ops._fast, None  # the numpy definition
    try:
        ops.attn_block(ref["qkv"], (nh, nkv, hd), ref["cos"], ref["sin"], ref["kcaches"], ref["vcaches"],
                       ref["bounds"], ref["starts"], out_ref, sub_w, 1e-5)  # fmt: skip
    finally:
        ops._fast = saved
    # the same float16 roundings were stored, but for the rare key whose float32 RoPE result (C vs numpy: last-bit
    # differences) sits next to a rounding boundary: one float16 step apart at most
    for a, b in zip(fast["kcaches"] + fast["vcaches"], ref["kcaches"] + ref["vcaches"], strict=True):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=2.0**-10, atol=0)
        assert np.count_nonzero(a != b) <= a.size // 1000
    assert np.abs(out_fast - out_ref).max() <= 2e-5 * np.abs(out_ref).max()


def test_attn_block_rejects_mixed_cache_types() -> None:
    x = _block_inputs(3, 2, 2, 8, [1], [3], 16)
    with pytest.raises(ValueError, match="bad cache array"):
        _ops.attn_block(x["qkv"], 2, 2, 8, x["cos"], x["sin"], x["kcaches"], [x["vcaches"][0].astype(np.float32)],
                        x["bounds"], x["starts"], np.empty((1, 16), np.float32))  # fmt: skip


def test_model_with_f16_cache(bitnet_dir: Path) -> None:
    exact = load_model(bitnet_dir)
    half = load_model(bitnet_dir, kv_cache="f16")
    assert (exact.kv_cache, half.kv_cache) == ("f32", "f16")
    ids = list(range(3, 60))
    a, b = exact.logits(ids), half.logits(ids)
    # float16 keys and values move attention by ~1e-3; int8 activation roundings downstream amplify it, as the
    # int8 output layer's 1e-2 (test_generation) does
    rel = np.linalg.norm(b - a) / np.linalg.norm(a)
    assert 0 < rel < 2e-2
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9
    p = SamplingParams(max_tokens=6, temperature=0)
    s32, s16 = exact.new_sequence([1, 2, 3], p), half.new_sequence([1, 2, 3], p)
    assert s16.k_cache.dtype == np.float16
    assert s16.nbytes * 2 == s32.nbytes
    prompts = [[5, 6, 7], list(range(20, 45)), [9]]
    alone = [list(half.generate(q, max_tokens=8, temperature=0)) for q in prompts]
    seqs = [half.new_sequence(q, SamplingParams(max_tokens=8, temperature=0)) for q in prompts]
    while not all(s.finished for s in seqs):
        half.step(seqs, prefill_chunk=7)
    assert [s.output_ids for s in seqs] == alone


def test_kv_cache_setting_checked(bitnet_dir: Path) -> None:
    with pytest.raises(ValueError, match="kv_cache must be 'f32' or 'f16'"):
        load_model(bitnet_dir, kv_cache="int4")
    m = load_model(bitnet_dir)
    with pytest.raises(ValueError, match="kv_cache must be"):
        m.set_kv_cache("bf16")
    m.set_kv_cache("f16")
    assert m.new_sequence([1], SamplingParams(max_tokens=1)).k_cache.dtype == np.float16
