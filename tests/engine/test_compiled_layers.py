"""The compiled layer loop (one call for every decoder layer) against the per-op path it replaces.

Both run the same C functions on the same rows in the same order, so every comparison here is exact: logits,
greedy tokens of batched prefill + decode steps, and the KV caches they leave behind.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from bitnet_actor.engine import SamplingParams, load_model, ops
from bitnet_actor.engine.model import Model
from bitnet_actor.engine.synthetic import SHAPES, random_weights

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    not (ops.FAST_OPS and ops.FAST_KERNELS), reason="the compiled kernels and engine ops are not built"
)

# odd widths (hidden 100: K padded to 256), GQA and plain multi-head, both gates, with and without sub-norms
_KEYS = ("shape", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "sub_norms")
CONFIGS: dict[str, dict[str, Any]] = {
    "2b4t-like": dict(zip(_KEYS, ("2b4t", 100, 6, 2, 18, 70, True), strict=True)),
    "700m-like": dict(zip(_KEYS, ("700m", 320, 5, 5, 64, 300, True), strict=True)),
    "no-subnorms": dict(zip(_KEYS, ("700m", 256, 4, 1, 32, 512, False), strict=True)),
}


def _model(name: str, seed: int = 0) -> Model:
    kw = dict(CONFIGS[name])
    base = SHAPES[kw.pop("shape")]
    cfg = dataclasses.replace(base, num_layers=3, vocab_size=500, context_length=128, **kw)
    return Model(random_weights(cfg, seed=seed))


def _both(model: Model, fn: Any) -> tuple[Any, Any]:
    assert model.compiled_layers
    compiled = fn()
    model.set_compiled_layers(False)
    try:
        per_op = fn()
    finally:
        model.set_compiled_layers(True)
    return compiled, per_op


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("threads", [1, 2])
def test_logits_identical(name: str, threads: int) -> None:
    model = _model(name)
    ids = list(np.random.default_rng(1).integers(0, 500, 41))
    before = ops.get_num_threads()
    ops.set_num_threads(threads)
    try:
        compiled, per_op = _both(model, lambda: model.logits(ids))
    finally:
        ops.set_num_threads(before)
    assert np.array_equal(compiled, per_op)
    assert np.isfinite(compiled).all() and float(np.abs(compiled).max()) > 0


@pytest.mark.parametrize("kv", ["f32", "f16"])
def test_batched_steps_and_caches_identical(kv: str) -> None:
    model = _model("2b4t-like", seed=4)
    model.set_kv_cache(kv)
    prompts = [list(range(1, 6)), list(range(7, 30)), [42]]

    def run() -> tuple[list[list[int]], list[np.ndarray]]:
        seqs = [model.new_sequence(p, SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)) for p in prompts]
        caches = [s.k_cache for s in seqs]  # the steps below release them when a sequence finishes
        while not all(s.finished for s in seqs):
            model.step(seqs, prefill_chunk=7)  # prefill chunks and decode rows in the same steps
        return [s.output_ids for s in seqs], [c.copy() for c in caches]

    (out_c, caches_c), (out_p, caches_p) = _both(model, run)
    assert out_c == out_p
    assert all(len(o) == 9 for o in out_c)
    for a, b, p in zip(caches_c, caches_p, prompts, strict=True):
        n = len(p) + 9 - 1  # positions written: the prompt and every generated token but the last
        assert a.dtype == np.dtype(np.float16 if kv == "f16" else np.float32)
        assert np.array_equal(a[:, :, :n], b[:, :, :n])


def test_checkpoints_take_the_compiled_loop(checkpoints: dict[str, Path]) -> None:
    ids = list(range(3, 30))
    for name in ("bitnet-auto-offline", "bitnet-bitlinear-offline", "bitnet-auto-online"):
        model = load_model(checkpoints[name])
        assert model.compiled_layers, name
        compiled, per_op = _both(model, lambda m=model: m.logits(ids))
        assert np.array_equal(compiled, per_op), name


def test_dense_layers_keep_the_per_op_path(checkpoints: dict[str, Path]) -> None:
    # a down_proj in modules_to_not_convert stays a dense product: the compiled loop does not take the model
    model = load_model(checkpoints["llama-bitlinear-offline"])
    assert not model.compiled_layers
    with pytest.raises(ValueError, match="compiled layer loop"):
        model.set_compiled_layers(True)
    assert np.isfinite(model.logits([1, 2, 3])).all()


def test_nonfinite_activations_are_refused_like_the_per_op_path() -> None:
    model = _model("700m-like")
    w = model.weights
    w.embed.data[7] = np.uint16(0x7FC0)  # a bf16 NaN in token 7's embedding
    for compiled in (True, False):
        model.set_compiled_layers(compiled)
        with pytest.raises(ValueError, match="NaN or inf"):
            model.logits([1, 7, 2])
    model.set_compiled_layers(True)
    logits = model.logits([1, 2])  # the model still runs; only token 7's tied output row is NaN
    assert np.isfinite(np.delete(logits, 7, axis=1)).all()


def test_op_times_add_up() -> None:
    model = _model("2b4t-like")
    model.op_times = np.zeros(3)
    model.logits(list(range(20)))
    first = model.op_times.copy()
    assert (first > 0).all()
    model.logits(list(range(20)))
    assert (model.op_times > first).all()


def test_run_layers_rejects_bad_caches() -> None:
    model = _model("2b4t-like")
    cfg = model.config
    stack = model._compiled
    x = np.zeros((2, cfg.hidden_size), dtype=np.float32)
    cs = np.ones((2, cfg.head_dim // 2), dtype=np.float32)
    bounds, starts = np.array([0, 2], dtype=np.int64), np.array([0], dtype=np.int64)
    good = np.zeros((cfg.num_layers, cfg.num_kv_heads, 8, cfg.head_dim), dtype=np.float32)
    bad_layers = np.zeros((cfg.num_layers - 1, cfg.num_kv_heads, 8, cfg.head_dim), dtype=np.float32)
    with pytest.raises(ValueError, match="bad cache"):
        ops.run_layers(stack, x, cs, cs, [bad_layers], [bad_layers], bounds, starts)
    with pytest.raises(ValueError, match="bad cache"):
        ops.run_layers(stack, x, cs, cs, [good], [good.astype(np.float16)], bounds, starts)
    with pytest.raises(ValueError, match="overflows"):
        ops.run_layers(stack, x, cs, cs, [good], [good], bounds, np.array([7], dtype=np.int64))
    with pytest.raises(ValueError, match="inconsistent"):
        ops.run_layers(stack, x, cs, cs, [good], [good], np.array([0, 1], dtype=np.int64), starts)
    with pytest.raises(ValueError, match="inconsistent"):  # bounds that go back: refused before any row is written
        ops.run_layers(stack, x[:1].copy(), cs, cs, [good, good], [good, good], np.array([0, 8, 1]), starts[[0, 0]])
    with pytest.raises(ValueError, match="overflows"):
        ops.run_layers(stack, x, cs, cs, [good], [good], bounds, np.array([2**62], dtype=np.int64))
    with pytest.raises(ValueError, match="not initialized"):
        type(stack).__new__(type(stack)).forward(x, cs, cs, [good], [good], bounds, starts)
    with pytest.raises(ValueError, match="columns"):
        ops.run_layers(stack, x[:, :-1].copy(), cs, cs, [good], [good], bounds, starts)
    ops.run_layers(stack, x, cs, cs, [good], [good], bounds, starts)  # the same call with good arguments runs
