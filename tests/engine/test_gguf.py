"""GGUF: the three ternary types give the same logits as the safetensors they came from; non-ternary types
dequantize like gguf's own reference; the reader's container parsing round-trips metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from bitnet_actor.engine import load_model
from bitnet_actor.engine.gguf_io import GGUFFile, dequantize, write_gguf

if TYPE_CHECKING:
    from pathlib import Path

gguf = pytest.importorskip("gguf", reason="the gguf package (test-only for writing) is not installed")


def _write(tmp_path: Path, ckpt: Path, ternary: str, dense: str = "F32") -> Path:
    from tests.engine.gguf_models import gguf_tensors, write_with_gguf_package

    meta, tensors = gguf_tensors(ckpt, ternary, dense)
    path = tmp_path / f"model-{ternary}-{dense}.gguf"
    if ternary == "I2_S":  # gguf cannot name type 36: our own writer
        write_gguf(path, meta, tensors)
        return path
    return write_with_gguf_package(path, meta, tensors)


@pytest.mark.parametrize("ternary", ["I2_S", "TQ1_0", "TQ2_0"])
@pytest.mark.parametrize("name", ["bitnet-gguf", "bitnet-gguf-bitlinear"])
def test_ternary_types_give_the_safetensors_logits(
    tmp_path: Path, checkpoints: dict[str, Path], ternary: str, name: str
) -> None:
    ids = list(range(3, 40))
    ref = load_model(checkpoints[name]).logits(ids)
    model = load_model(_write(tmp_path, checkpoints[name], ternary))
    assert model.info.source_format == "gguf"
    assert dict(model.info.formats)[ternary] == 14
    got = model.logits(ids)
    # TQ scales are fp16: the checkpoint's autobitlinear scales are fp16-exact, bitlinear ones are reciprocals
    tol = 0 if name == "bitnet-gguf" or ternary == "I2_S" else 2e-3
    assert np.linalg.norm(got - ref) <= tol * np.linalg.norm(ref)


def test_llama_gguf_undoes_the_qk_permutation(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    ckpt = checkpoints["llama-gguf"]
    ids = list(range(5, 30))
    ref = load_model(ckpt).logits(ids)
    got = load_model(_write(tmp_path, ckpt, "TQ2_0")).logits(ids)
    # bitlinear scales are reciprocals: fp16 rounding of the TQ2_0 block scale is the only difference
    assert np.linalg.norm(got - ref) <= 2e-3 * np.linalg.norm(ref)
    assert np.argmax(got, axis=1).tolist() == np.argmax(ref, axis=1).tolist()


@pytest.mark.parametrize("dense", ["F32", "F16", "BF16"])
def test_float_embeddings_are_exact(tmp_path: Path, checkpoints: dict[str, Path], dense: str) -> None:
    ids = list(range(3, 30))
    ckpt = checkpoints["bitnet-gguf"]
    ref = load_model(ckpt).logits(ids)
    got = load_model(_write(tmp_path, ckpt, "TQ2_0", dense)).logits(ids)
    # the checkpoint's embedding is bf16-exact (hence f16-exact at these magnitudes)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dense", ["Q8_0", "Q6_K"])
def test_quantized_embeddings_load_and_stay_close(tmp_path: Path, checkpoints: dict[str, Path], dense: str) -> None:
    ids = list(range(3, 30))
    ckpt = checkpoints["bitnet-gguf"]
    ref = load_model(ckpt).logits(ids)
    got = load_model(_write(tmp_path, ckpt, "TQ2_0", dense)).logits(ids)
    assert np.linalg.norm(got - ref) <= 0.1 * np.linalg.norm(ref)


@pytest.mark.parametrize("kind", ["Q8_0", "Q6_K", "F16", "BF16"])
def test_dequantize_matches_gguf_reference(tmp_path: Path, kind: str) -> None:
    x = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    if kind == "Q6_K":
        from tests.engine.gguf_models import quantize_q6_k

        raw = quantize_q6_k(x)
    else:
        raw = gguf.quants.quantize(x, qtype)
    expect = gguf.quants.dequantize(raw, qtype)
    path = tmp_path / "t.gguf"
    data = raw.reshape(-1) if raw.dtype == np.uint8 else raw
    if kind == "BF16":
        data = raw.view(np.uint16)
    write_gguf(path, {"general.architecture": "test"}, {"t": (kind, (8, 512), data)})
    got = dequantize(GGUFFile(path).tensors["t"])
    np.testing.assert_array_equal(got, expect.reshape(8, 512).astype(np.float32))


def test_metadata_round_trip(tmp_path: Path) -> None:
    meta = {
        "general.architecture": "bitnet-b1.58",
        "an.int": 7,
        "a.neg": -3,
        "a.float": 0.5,
        "a.bool": True,
        "a.str": "héllo",
        "tokenizer.ggml.tokens": ["a", "b", "<s>"],
        "tokenizer.ggml.scores": [0.0, -1.5, 2.0],
        "tokenizer.ggml.token_type": [1, 1, 3],
    }
    path = tmp_path / "m.gguf"
    write_gguf(path, meta, {"x": ("F32", (2, 3), np.arange(6, dtype=np.float32).reshape(2, 3))}, alignment=64)
    g = GGUFFile(path)
    for k, v in meta.items():
        assert g.metadata[k] == v
    assert g.alignment == 64
    np.testing.assert_array_equal(g.tensors["x"].data, np.arange(6, dtype=np.float32).reshape(2, 3))
    # gguf's own reader agrees on the container
    r = gguf.GGUFReader(str(path))
    assert r.tensors[0].name == "x"
