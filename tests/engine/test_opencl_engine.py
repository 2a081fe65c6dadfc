"""Whole models on OpenCL (``load_model(path, device="opencl")``) against transformers and the CPU path.

Bound: the oracle's (``test_oracle``): per position, the 90th percentile of the relative error of the logits
<= 1e-5 and every position <= 3e-2, with the same greedy 32 tokens.  It holds for the same reason: the
kernels reproduce the int8 activation quantization bit for bit and the ternary products are exact, so only
float32 summation order differs (norms, attention, output layer; measured r_t ~ 1e-7).  Against the CPU path
the device must also give identical greedy tokens alone and inside a batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from bitnet_actor.engine import DeviceError, SamplingParams, load_model
from tests.engine.hf_models import load_oracle, oracle_greedy, oracle_logits
from tests.engine.test_oracle import NAMES, _prompt, assert_close, row_errors
from tests.kernels_opencl.devices import device_params

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(params=device_params())
def selector(request: pytest.FixtureRequest) -> str:
    """An OpenCL device selector (``P:D``)."""
    return str(request.param)


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_greedy_match_transformers(checkpoints: dict[str, Path], name: str, selector: str) -> None:
    model = load_model(checkpoints[name], device="opencl", opencl_device=selector)
    assert model.device.startswith("opencl:")
    oracle = load_oracle(checkpoints[name])
    ids = _prompt(37)
    ours = model.logits(ids)
    assert ours.shape == (37, 301)
    assert ours.dtype == np.float32
    assert_close(ours, oracle_logits(oracle, ids))
    cpu = load_model(checkpoints[name]).logits(ids)
    assert np.percentile(row_errors(ours, cpu), 90) <= 1e-5
    prompt = ids[:9]
    assert list(model.generate(prompt, max_tokens=32, temperature=0)) == oracle_greedy(oracle, prompt, 32)


def test_a_long_prompt_attends_in_chunks(checkpoints: dict[str, Path], selector: str) -> None:
    model = load_model(checkpoints["bitnet-auto-offline"], device="opencl", opencl_device=selector)
    ids = _prompt(150)
    assert model._runner is not None
    assert model._runner.att_rows == 64
    chunked = model.logits(ids)  # attention launches of 64 + 64 + 22 query rows
    model._runner.att_rows = 1000
    whole = model.logits(ids)  # one launch
    np.testing.assert_array_equal(chunked, whole)  # each row's attention is the same computation either way
    # and the same model as the CPU's (numerically: a rare int8 flip shifts later rows, so the bound is loose)
    assert row_errors(chunked, load_model(checkpoints["bitnet-auto-offline"]).logits(ids)).max() <= 3e-2


def test_greedy_alone_equals_greedy_in_a_batch(checkpoints: dict[str, Path], selector: str) -> None:
    path = checkpoints["bitnet-auto-offline"]
    model = load_model(path, device="opencl", opencl_device=selector)
    cpu = load_model(path)
    prompts = [_prompt(n, seed=n) for n in (3, 11, 20, 6)]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    alone = [list(cpu.generate(p, max_tokens=12, temperature=0, ignore_eos=True)) for p in prompts]
    seqs = [model.new_sequence(p, params) for p in prompts]
    assert all(s.nbytes > 0 for s in seqs)
    while not all(s.finished for s in seqs):
        model.step(seqs, prefill_chunk=4)  # chunked prefill beside decoding rows
    assert [s.output_ids for s in seqs] == alone
    assert all(s.nbytes == 0 for s in seqs)  # finished sequences free their device caches


def _block_scaled_gguf(ckpt: Path, tmp_path: Path) -> Path:
    """A TQ2_0 GGUF of ``ckpt`` whose block scales all differ, with a bf16 (tied) embedding."""
    pytest.importorskip("gguf", reason="the gguf package (test-only for writing) is not installed")
    from tests.engine.gguf_models import gguf_tensors, write_with_gguf_package

    meta, tensors = gguf_tensors(ckpt, "TQ2_0", "BF16")
    rng = np.random.default_rng(0)
    for name, (kind, shape, raw) in list(tensors.items()):
        if kind != "TQ2_0":
            continue
        data = np.ascontiguousarray(raw).view(np.uint8)
        blocks = data.reshape(-1, 66).copy()  # qs[64], fp16 d
        d = blocks[:, 64:].copy().view(np.float16).reshape(-1).astype(np.float32)
        blocks[:, 64:] = (d * rng.uniform(0.5, 1.5, d.shape)).astype(np.float16).view(np.uint8).reshape(-1, 2)
        tensors[name] = (kind, shape, blocks.reshape(data.shape))
    return write_with_gguf_package(tmp_path / "block-scaled.gguf", meta, tensors)


def test_block_scaled_gguf_and_q8_output(checkpoints: dict[str, Path], tmp_path: Path, selector: str) -> None:
    path = _block_scaled_gguf(checkpoints["bitnet-gguf"], tmp_path)
    ids = _prompt(21)
    cpu = load_model(path)
    dev = load_model(path, device="opencl", opencl_device=selector)
    assert dict(dev.info.formats)["TQ2_0"] == 14
    assert dev.weights.layers[0].down.ternary.row_scale is None  # really per block
    assert np.percentile(row_errors(dev.logits(ids), cpu.logits(ids)), 90) <= 1e-5
    cpu.set_output_layer("q8")
    dev.set_output_layer("q8")
    assert dev.info.output_layer == "q8"
    assert np.percentile(row_errors(dev.logits(ids), cpu.logits(ids)), 90) <= 1e-5


def test_auto_takes_gpus_only(checkpoints: dict[str, Path], selector: str) -> None:
    from tests.kernels_opencl.devices import devices

    kind = next(d.kind for d in devices() if d.index == selector)
    model = load_model(checkpoints["bitnet-auto-offline"], device="auto", opencl_device=selector)
    # a CPU OpenCL device (PoCL) is slower than the Cython kernels on the same cores: auto keeps the CPU path
    assert model.device.startswith("opencl:") == (kind in ("gpu", "accelerator"))


def test_device_errors(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["bitnet-auto-offline"]
    with pytest.raises(DeviceError, match="no OpenCL device matches 'no-such-gpu'"):
        load_model(path, device="opencl", opencl_device="no-such-gpu")
    fallback = load_model(path, device="auto", opencl_device="no-such-gpu")  # auto: the CPU, with a warning
    assert fallback.device == "cpu"
    with pytest.raises(ValueError, match="device must be one of cpu, opencl, auto"):
        load_model(path, device="cuda")


def test_a_kv_cache_the_device_cannot_hold_is_a_memory_error(selector: str) -> None:
    import dataclasses

    import kernels_opencl
    from bitnet_actor.engine.model import Model
    from bitnet_actor.engine.synthetic import SHAPES, random_weights

    ctx = kernels_opencl.Context(selector)
    limit = int(ctx.device.max_mem_alloc_size)
    cfg = dataclasses.replace(
        SHAPES["2b4t"], hidden_size=64, num_layers=8, num_heads=4, num_kv_heads=4, head_dim=16,
        intermediate_size=64, vocab_size=64,
    )  # fmt: skip
    per_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    cfg = dataclasses.replace(cfg, context_length=limit // per_token + 64)
    model = Model(random_weights(cfg), opencl=ctx)
    with pytest.raises(MemoryError, match="KV cache"):
        model.new_sequence([1, 2, 3], SamplingParams(max_tokens=cfg.context_length - 3))
    seq = model.new_sequence([1, 2, 3], SamplingParams(max_tokens=4, temperature=0))  # the device still works
    while not seq.finished:
        model.step([seq])
    assert len(seq.output_ids) == 4
