"""The fast kernels equal the numpy reference exactly, on every ISA path and thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels_cython import reference as ref
from kernels_cython.reference import TernaryMatrix

kc = pytest.importorskip("kernels_cython._ternary", reason="Cython extension not built")

ALL_ISAS = ["portable", "avx2", "avx512-emulated", "avx512", "amx"]
THREADS = [1, 2, 3]
# (M, N, K): odd K (no multiple of any block), N = 1, M = 1..257
SHAPES = [
    (1, 1, 1),
    (1, 7, 300),
    (1, 64, 2560),
    (1, 33, 4097),
    (2, 1, 129),
    (2, 70, 2560),
    (3, 65, 1000),
    (4, 33, 4097),
    (3, 17, 255),
    (4, 16, 256),
    (5, 31, 513),
    (6, 9, 3000),
    (8, 3, 1000),
    (31, 40, 384),
    (33, 100, 4097),
    (48, 70, 1000),
    (64, 2, 2049),
    (128, 19, 640),
    (257, 5, 77),
]


@pytest.fixture(params=ALL_ISAS)
def isa(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in kc.available_isas():
        pytest.skip(f"this CPU cannot run the {name} path")
    return name


def _case(seed: int, m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, TernaryMatrix]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    xq = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.01, 100.0, size=(m, 1))).astype(np.float32)
    return xq, x, TernaryMatrix.from_codes(codes, float(rng.uniform(0.01, 2.0)))


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matmul_int32_equals_reference(isa: str, m: int, n: int, k: int, seed: int) -> None:
    xq, _, w = _case(seed, m, n, k)
    expect = ref.ternary_matmul_int32(xq, w)
    for threads in THREADS:
        got = kc.ternary_matmul_int32(xq, w, isa=isa, threads=threads)
        assert got.dtype == np.int32
        assert got.shape == (m, n)
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
@pytest.mark.parametrize("seed", [0, 3])
def test_linear_and_quantize_equal_reference(isa: str, m: int, n: int, k: int, seed: int) -> None:
    _, x, w = _case(seed, m, n, k)
    expect_q, expect_s = ref.quantize_activations(x)
    expect = ref.ternary_linear(x, w)
    for threads in THREADS:
        q, s = kc.quantize_activations(x, isa=isa, threads=threads)
        np.testing.assert_array_equal(q, expect_q)
        np.testing.assert_array_equal(s, expect_s)
        got = kc.ternary_linear(x, w, isa=isa, threads=threads)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 130])
def test_extreme_values_no_overflow(isa: str, m: int) -> None:
    # int16 accumulators are at their limits when every product is 2 * -128 (code 2, x = -128)
    k = 8192 + 256
    for code, value in ((1, -128), (1, 127), (-1, -128), (-1, 127), (0, -128)):
        w = TernaryMatrix.from_codes(np.full((3, k), code, dtype=np.int8))
        xq = np.full((m, k), value, dtype=np.int8)
        got = kc.ternary_matmul_int32(xq, w, isa=isa, threads=2)
        np.testing.assert_array_equal(got, np.full((m, 3), code * value * k, dtype=np.int32))
    rng = np.random.default_rng(9)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(9, k))
    w = TernaryMatrix.from_codes(codes)
    xq = rng.choice(np.array([-128, 127], dtype=np.int8), size=(m, k))
    np.testing.assert_array_equal(kc.ternary_matmul_int32(xq, w, isa=isa), ref.ternary_matmul_int32(xq, w))


def test_quantize_special_rows(isa: str) -> None:
    x = np.zeros((6, 300), dtype=np.float32)
    x[1, 7] = 1e-7
    x[2, :] = np.linspace(-3e38, 3e38, 300, dtype=np.float32)
    x[3, ::3] = -2.5
    x[4, :] = 0.5
    x[5, 299] = -1.0
    q, s = kc.quantize_activations(x, isa=isa)
    eq, es = ref.quantize_activations(x)
    np.testing.assert_array_equal(q, eq)
    np.testing.assert_array_equal(s, es)


@pytest.mark.parametrize("kind", ["rows", "blocks"])
def test_linear_block_scales(isa: str, kind: str) -> None:
    rng = np.random.default_rng(11)
    n, k = 9, 700
    codes = rng.integers(-1, 2, size=(n, k)).astype(np.int8)
    if kind == "rows":
        scales = np.repeat(rng.uniform(0.1, 1.0, size=(n, 1)), 3, axis=1).astype(np.float32)
    else:
        scales = rng.uniform(0.1, 1.0, size=(n, 3)).astype(np.float32)
    w = TernaryMatrix.from_codes(codes, scales)
    for m in (1, 6):
        x = rng.standard_normal((m, k)).astype(np.float32)
        np.testing.assert_array_equal(kc.ternary_linear(x, w, isa=isa, threads=2), ref.ternary_linear(x, w))


def test_converted_weights(isa: str) -> None:
    rng = np.random.default_rng(12)
    codes = rng.integers(-1, 2, size=(12, 512)).astype(np.int8)
    w = TernaryMatrix.from_codes(codes, 0.5)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    expect = ref.ternary_linear(x, w)
    for back in (
        ref.from_tq2_0(ref.to_tq2_0(w), w.shape),
        ref.from_tq1_0(ref.to_tq1_0(w), w.shape),
        ref.from_i2_s(ref.to_i2_s(w), w.shape),
        ref.from_hf_packed(*ref.to_hf_packed(w), n_out=12),
    ):
        np.testing.assert_array_equal(kc.ternary_linear(x, back, isa=isa), expect)


def test_bad_input_fast() -> None:
    w = TernaryMatrix.from_codes(np.zeros((3, 8), dtype=np.int8))
    good = np.ones((2, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        kc.ternary_linear(good.astype(np.float64), w)
    with pytest.raises(TypeError, match="numpy"):
        kc.ternary_linear([[1.0] * 8], w)
    with pytest.raises(ValueError, match="2-D"):
        kc.ternary_linear(good[0], w)
    with pytest.raises(ValueError, match="2-D"):
        kc.ternary_matmul_int32(np.zeros((1, 1, 8), dtype=np.int8), w)
    with pytest.raises(ValueError, match="C-contiguous"):
        kc.ternary_linear(np.ones((8, 2), dtype=np.float32).T, w)
    with pytest.raises(ValueError, match="C-contiguous"):
        kc.ternary_matmul_int32(np.ones((2, 16), dtype=np.int8)[:, ::2], w)
    with pytest.raises(ValueError, match="inner dimensions"):
        kc.ternary_linear(np.ones((2, 9), dtype=np.float32), w)
    with pytest.raises(TypeError, match="TernaryMatrix"):
        kc.ternary_matmul_int32(np.ones((2, 8), dtype=np.int8), "w")
    with pytest.raises(TypeError, match="int8"):
        kc.ternary_matmul_int32(good, w)
    with pytest.raises(ValueError, match="unknown isa"):
        kc.ternary_linear(good, w, isa="sse9")
    with pytest.raises(TypeError, match="isa"):
        kc.ternary_linear(good, w, isa=3)
    with pytest.raises(ValueError, match="threads"):
        kc.ternary_linear(good, w, threads=0)
    with pytest.raises(TypeError, match="threads"):
        kc.ternary_linear(good, w, threads=1.5)
    wide = TernaryMatrix.from_codes(np.zeros((3, 300), dtype=np.int8))
    for isa in kc.available_isas():
        for bad in (np.nan, np.inf, -np.inf):
            for m in (1, 300):  # 300 x 300 takes the parallel quantization path
                x = np.ones((m, 300), dtype=np.float32)
                x[m - 1, 299] = bad
                with pytest.raises(ValueError, match="NaN or inf"):
                    kc.ternary_linear(x, wide, isa=isa, threads=2)
                with pytest.raises(ValueError, match="NaN or inf"):
                    kc.quantize_activations(x, isa=isa, threads=2)
    if "avx512" not in kc.available_isas():
        with pytest.raises(ValueError, match="not supported"):
            kc.ternary_linear(good, w, isa="avx512")


def test_empty_batch() -> None:
    w = TernaryMatrix.from_codes(np.zeros((3, 8), dtype=np.int8))
    assert kc.ternary_linear(np.zeros((0, 8), dtype=np.float32), w).shape == (0, 3)
    assert kc.ternary_matmul_int32(np.zeros((0, 8), dtype=np.int8), w).shape == (0, 3)


def test_threads_setting() -> None:
    before = kc.get_num_threads()
    assert before >= 1
    try:
        kc.set_num_threads(1)
        assert kc.get_num_threads() == 1
        with pytest.raises(ValueError, match=">= 1"):
            kc.set_num_threads(0)
        with pytest.raises(TypeError, match="int"):
            kc.set_num_threads("2")
    finally:
        kc.set_num_threads(before)


def test_import_self_check(isa: str) -> None:
    # the check that drops an AVX-512 path disagreeing with the portable one at import
    assert kc._verify_isa(isa)
    assert not kc._verify_isa("no-such-isa")


def test_package_reexports() -> None:
    import kernels_cython

    assert kernels_cython.TernaryMatrix is TernaryMatrix
    assert kernels_cython.ternary_linear is kc.ternary_linear
    assert kc.default_isa() in kc.available_isas()
    assert "portable" in kc.available_isas()


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    full_env = {**os.environ, "PYTHONPATH": str(root), **env}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=root, check=False
    )


def test_threads_from_environment() -> None:
    done = _python("import kernels_cython as k; print(k.get_num_threads())", BITNET_THREADS="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_reference_without_extension() -> None:
    code = (
        "import sys; sys.modules['kernels_cython._ternary'] = None\n"
        "import numpy as np, kernels_cython as k\n"
        "from kernels_cython import reference as r\n"
        "w = k.TernaryMatrix.from_codes(np.ones((2, 3), dtype=np.int8))\n"
        "print(r.ternary_linear(np.ones((1, 3), dtype=np.float32), w)[0, 0])\n"
        "try:\n    k.ternary_linear\nexcept ImportError as e:\n    print('ImportError', 'build_ext' in str(e))\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3.0", "ImportError", "True"]
