"""The numpy reference: layout, rounding, converters and input validation (no compiler needed)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels_cython import reference as ref
from kernels_cython.reference import TernaryMatrix

ODD_SHAPES = [(1, 1), (1, 255), (3, 256), (5, 257), (7, 300), (4, 513), (33, 1000)]


def _codes(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.integers(-1, 2, size=(n, k)).astype(np.int8)


@pytest.mark.parametrize(("n", "k"), ODD_SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_codes_round_trip_and_layout(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = _codes(rng, n, k)
    w = TernaryMatrix.from_codes(codes, 0.25)
    assert w.shape == (n, k)
    assert w.scale == 0.25
    kp = -(-k // 256) * 256
    assert w.padded_k == kp
    assert w.packed.shape == (n, kp // 4)
    assert w.nbytes == n * kp // 4
    assert w.packed.ctypes.data % 64 == 0
    assert not w.packed.flags.writeable
    np.testing.assert_array_equal(w.to_codes(), codes)
    # the documented bit position of every weight, padding included (code 1 = weight 0)
    kk = np.arange(kp)
    byte = (kk // 128) * 32 + kk % 32
    shift = 2 * ((kk % 128) // 32)
    unpacked = (w.packed[:, byte] >> shift) & 3  # (N, Kp)
    np.testing.assert_array_equal(unpacked[:, :k].astype(np.int8) - 1, codes)
    assert (unpacked[:, k:] == 1).all()


def test_from_float_is_absmean() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((17, 300)).astype(np.float32)
    m = TernaryMatrix.from_float(w)
    scale = np.float32(np.abs(w).mean(dtype=np.float64))
    assert m.scale == float(scale)
    np.testing.assert_array_equal(m.to_codes(), np.clip(np.rint(w / scale), -1, 1).astype(np.int8))
    zero = TernaryMatrix.from_float(np.zeros((2, 3), dtype=np.float32))
    assert zero.scale == float(np.float32(1e-5))
    assert (zero.to_codes() == 0).all()


def test_quantize_activations_torch_order() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 77)).astype(np.float32) * np.float32(3.0)
    x[1] = 0.0
    x[2] *= np.float32(1e-7)  # amax below the 1e-5 clamp
    x[3, 5] = 1e30
    xq, s = ref.quantize_activations(x)
    amax = np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))
    expect_s = (np.float32(1) / amax) * np.float32(127)
    np.testing.assert_array_equal(s, expect_s.astype(np.float32))
    assert s.dtype == np.float32
    assert xq.dtype == np.int8
    np.testing.assert_array_equal(xq, np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8))
    assert (xq[1] == 0).all()
    # ties round to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    t = np.array([[127.0, 0.5, 1.5, 2.5, -2.5]], dtype=np.float32)
    tq, ts = ref.quantize_activations(t)
    assert ts[0] == np.float32(1.0)
    np.testing.assert_array_equal(tq[0], [127, 0, 2, 2, -2])


@pytest.mark.parametrize(("n", "k"), ODD_SHAPES)
def test_matmul_int32_and_linear(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 1000 + k)
    codes = _codes(rng, n, k)
    w = TernaryMatrix.from_codes(codes, 0.5)
    xq = rng.integers(-128, 128, size=(5, k)).astype(np.int8)
    acc = ref.ternary_matmul_int32(xq, w)
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, xq.astype(np.int64) @ codes.astype(np.int64).T)
    x = rng.standard_normal((5, k)).astype(np.float32)
    y = ref.ternary_linear(x, w)
    q, s = ref.quantize_activations(x)
    expect = (ref.ternary_matmul_int32(q, w).astype(np.float32) / s[:, None]) * np.float32(0.5)
    np.testing.assert_array_equal(y, expect)
    assert y.dtype == np.float32
    # close to the float product of the dequantized weights
    dense = x @ (codes.astype(np.float32) * np.float32(0.5)).T
    assert np.abs(y - dense).max() <= 0.02 * np.abs(x).max() * k**0.5 + 1e-3


def test_block_scales_collapse_row_and_general() -> None:
    rng = np.random.default_rng(5)
    codes = _codes(rng, 4, 600)
    same = TernaryMatrix.from_codes(codes, np.full((4, 3), 0.5, dtype=np.float32))
    assert same.scale == 0.5
    assert same.row_scale is None
    rows = np.repeat(np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32), 3, axis=1)
    per_row = TernaryMatrix.from_codes(codes, rows)
    assert isinstance(per_row.scale, np.ndarray)
    assert per_row.row_scale is not None
    np.testing.assert_array_equal(per_row.row_scale, [1, 2, 3, 4])
    blocks = rng.uniform(0.5, 2.0, size=(4, 3)).astype(np.float32)
    general = TernaryMatrix.from_codes(codes, blocks)
    assert general.row_scale is None
    x = rng.standard_normal((3, 600)).astype(np.float32)
    q, s = ref.quantize_activations(x)
    expect = np.zeros((3, 4), dtype=np.float32)
    for b in range(3):
        part = q[:, b * 256 : (b + 1) * 256].astype(np.int32) @ codes[:, b * 256 : (b + 1) * 256].astype(np.int32).T
        expect += (part.astype(np.float32) / s[:, None]) * blocks[None, :, b]
    np.testing.assert_array_equal(ref.ternary_linear(x, general), expect)
    with pytest.raises(ValueError, match="scale"):
        TernaryMatrix.from_codes(codes, np.ones((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        TernaryMatrix.from_codes(codes, float("nan"))


# ------------------------------------------------------------------------------------------------ converters


def _hf_pack_like_transformers(codes: np.ndarray) -> np.ndarray:
    """An independent port of transformers' ``pack_weights`` loop (codes int8 (N, K))."""
    n = codes.shape[0]
    row_dim = (n + 3) // 4
    packed = np.zeros((row_dim, codes.shape[1]), dtype=np.uint8)
    unpacked = (codes + 1).astype(np.uint8)
    for i in range(min(4, n // row_dim + 1)):
        start = i * row_dim
        end = min(start + row_dim, n)
        packed[: end - start] |= unpacked[start:end] << (2 * i)
    return packed


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 13, 64])
def test_hf_packed_round_trip(n: int) -> None:
    rng = np.random.default_rng(n)
    codes = _codes(rng, n, 37)
    hf = _hf_pack_like_transformers(codes)
    w = ref.from_hf_packed(hf, 0.75, n_out=n)
    np.testing.assert_array_equal(w.to_codes(), codes)
    assert w.scale == 0.75
    packed, scale = ref.to_hf_packed(w)
    np.testing.assert_array_equal(packed, hf)
    assert scale == 0.75
    r = hf.shape[0]
    for i in range(4):  # the documented formula
        for p in range(r):
            if i * r + p < n:
                np.testing.assert_array_equal(codes[i * r + p], ((hf[p] >> (2 * i)) & 3).astype(np.int8) - 1)


def test_hf_packed_errors() -> None:
    bad = np.full((2, 5), 0xFF, dtype=np.uint8)
    with pytest.raises(ValueError, match="code 3"):
        ref.from_hf_packed(bad, 1.0)
    with pytest.raises(ValueError, match="n_out"):
        ref.from_hf_packed(np.zeros((2, 5), dtype=np.uint8), 1.0, n_out=9)
    with pytest.raises(TypeError, match="uint8"):
        ref.from_hf_packed(np.zeros((2, 5), dtype=np.int8), 1.0)
    per_block = TernaryMatrix.from_codes(np.zeros((2, 512), dtype=np.int8), np.array([[1, 2], [3, 4]], np.float32))
    with pytest.raises(ValueError, match="per-block"):
        ref.to_hf_packed(per_block)
    with pytest.raises(ValueError, match="per-block"):
        ref.to_i2_s(per_block)


def _i2s_pack_like_bitnet(codes: np.ndarray, scale: float) -> np.ndarray:
    """An independent scalar port of microsoft/BitNet's x86 ``quantize_i2_s`` packing loop."""
    q8 = (codes.reshape(-1) + 1).astype(np.uint8)
    n = q8.size
    out = np.zeros(n // 4 + 32, dtype=np.uint8)
    for i in range(n // 128):
        for j in range(128):
            group_idx, group_pos = j // 32, j % 32
            out[i * 32 + group_pos] |= np.uint8(q8[i * 128 + j] << (6 - 2 * group_idx))
    out[n // 4 : n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return out


@pytest.mark.parametrize(("n", "k"), [(1, 128), (3, 128), (2, 320), (4, 256)])
def test_i2_s_round_trip(n: int, k: int) -> None:
    rng = np.random.default_rng(k + n)
    codes = _codes(rng, n, k)
    data = _i2s_pack_like_bitnet(codes, 0.125)
    w = ref.from_i2_s(data, (n, k))
    np.testing.assert_array_equal(w.to_codes(), codes)
    assert w.scale == 0.125
    np.testing.assert_array_equal(ref.to_i2_s(w), data)
    with pytest.raises(ValueError, match="bytes"):
        ref.from_i2_s(data[:-1], (n, k))
    with pytest.raises(ValueError, match="multiple of 128"):
        ref.from_i2_s(data, (1, 100))


@pytest.mark.parametrize("fmt", ["tq1_0", "tq2_0"])
@pytest.mark.parametrize(("n", "k"), [(1, 256), (3, 512), (5, 768)])
def test_tq_round_trip_against_gguf(fmt: str, n: int, k: int) -> None:
    gguf_quants = pytest.importorskip("gguf.quants")
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, fmt.upper())
    to_fmt = getattr(ref, f"to_{fmt}")
    from_fmt = getattr(ref, f"from_{fmt}")
    rng = np.random.default_rng(n * k)
    codes = _codes(rng, n, k)
    dense = codes.astype(np.float32) * np.float32(0.5)
    theirs = np.asarray(gguf_quants.quantize(dense, qtype)).reshape(-1)
    w = TernaryMatrix.from_codes(codes, 0.5)
    ours = to_fmt(w)
    np.testing.assert_array_equal(ours, theirs)
    back = from_fmt(theirs, (n, k))
    np.testing.assert_array_equal(back.to_codes(), codes)
    assert back.scale == 0.5
    np.testing.assert_array_equal(to_fmt(back), theirs)
    np.testing.assert_array_equal(gguf_quants.dequantize(ours, qtype).reshape(n, k), dense)
    # per-block scales survive a round trip (fp16 values) and dequantize as gguf does
    blocks = rng.uniform(0.1, 2.0, size=(n, k // 256)).astype(np.float16).astype(np.float32)
    wb = TernaryMatrix.from_codes(codes, blocks)
    data = to_fmt(wb)
    np.testing.assert_array_equal(to_fmt(from_fmt(data, (n, k))), data)
    expect = codes.astype(np.float32) * np.repeat(blocks, 256, axis=1)
    np.testing.assert_array_equal(gguf_quants.dequantize(data, qtype).reshape(n, k), expect)


def test_tq_errors() -> None:
    w = TernaryMatrix.from_codes(np.zeros((2, 300), dtype=np.int8), 1.0)
    with pytest.raises(ValueError, match="multiple of 256"):
        ref.to_tq2_0(w)
    with pytest.raises(ValueError, match="multiple of 256"):
        ref.to_tq1_0(w)
    with pytest.raises(ValueError, match="bytes"):
        ref.from_tq2_0(np.zeros(65, dtype=np.uint8), (1, 256))
    with pytest.raises(TypeError, match="uint8"):
        ref.from_tq1_0(np.zeros(54, dtype=np.int8), (1, 256))
    bad = np.zeros(54, dtype=np.uint8)
    bad[52:54] = np.frombuffer(np.float16(np.nan).tobytes(), dtype=np.uint8)
    with pytest.raises(ValueError, match="NaN"):
        ref.from_tq1_0(bad, (1, 256))


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_reference() -> None:
    w = TernaryMatrix.from_codes(np.zeros((3, 8), dtype=np.int8))
    good = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        ref.ternary_linear(good.astype(np.float64), w)
    with pytest.raises(TypeError, match="numpy"):
        ref.ternary_linear([[1.0] * 8], w)
    with pytest.raises(ValueError, match="2-D"):
        ref.ternary_linear(good[0], w)
    with pytest.raises(ValueError, match="C-contiguous"):
        ref.ternary_linear(np.ones((8, 2), dtype=np.float32).T, w)
    with pytest.raises(ValueError, match="inner dimensions"):
        ref.ternary_linear(np.ones((2, 9), dtype=np.float32), w)
    with pytest.raises(TypeError, match="TernaryMatrix"):
        ref.ternary_linear(good, np.zeros((3, 8)))  # type: ignore[arg-type]
    for bad in (np.nan, np.inf, -np.inf):
        x = good.copy()
        x[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            ref.ternary_linear(x, w)
        with pytest.raises(ValueError, match="NaN or inf"):
            ref.quantize_activations(x)
    with pytest.raises(TypeError, match="int8"):
        ref.ternary_matmul_int32(good, w)
    with pytest.raises(TypeError, match="int8"):
        TernaryMatrix.from_codes(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        TernaryMatrix.from_codes(np.full((2, 2), 2, dtype=np.int8))
    with pytest.raises(ValueError, match="2-D"):
        TernaryMatrix.from_codes(np.zeros(4, dtype=np.int8))
    with pytest.raises(ValueError, match="NaN or inf"):
        TernaryMatrix.from_float(np.full((2, 2), np.nan, dtype=np.float32))
