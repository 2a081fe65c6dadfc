# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled engine ops (RMSNorm, RoPE, attention, gated activations, dense products) with OpenMP.

Same math as the numpy versions in :mod:`bitnet_actor.engine.ops`; inner loops in ``engine_simd.h``.  Each
output row is computed by the same code whatever the batch, so results do not depend on batching.
Arguments are validated by the callers in :mod:`bitnet_actor.engine.ops` (shapes, dtypes, contiguity).
"""

from cython.parallel cimport prange
from libc.math cimport fabsf, rintf
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cimport numpy as cnp
cimport openmp

from kernels_cython._ternary cimport (
    tl_default_isa,
    tl_default_threads,
    tl_linear,
    tl_scratch,
    tl_scratch_free,
    tl_scratch_init,
)

import numpy as np

cnp.import_array()


cdef extern from "engine_simd.h" nogil:
    int be_has_simd()
    void be_rmsnorm_row(const float *x, const float *w, float *y, int64_t K, float eps)
    void be_rope_row(float *x, int64_t H, int64_t D, const float *cos_, const float *sin_)
    void be_glu_row(const float *gu, float *out, int64_t F, int relu2)
    int BE_HAS_F16_KV
    void be_store_f16(void *dst, const float *src, int64_t n)
    void be_attend_f16(const float *q, const void *k, const void *v, int64_t t, int64_t D, float scale,
                       float *sc, float *out)
    void be_attend(const float *q, const float *k, const float *v, int64_t t, int64_t D, float scale,
                   float *sc, float *out)
    void be_dense_portable(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                           int64_t n1, float *y, int64_t N)
    void be_dense_simd(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                       int64_t n1, float *y, int64_t N)
    void be_q8_portable(const int8_t *xq, const float *xs, int64_t M, int64_t K, const int8_t *W,
                        const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    void be_q8_simd(const int8_t *xq, const float *xs, int64_t M, int64_t Kp, const int8_t *W,
                    const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    void be_dense_avx512(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0, int64_t n1,
                         float *y, int64_t N)
    void be_q8_vnni(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t Kp,
                    const int8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    int be_has_vnni512()
    void be_q6_portable(const int8_t *xq, const float *xs, int64_t M, int64_t Kp, const uint8_t *W,
                        const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    void be_q6_simd(const uint8_t *xu, const float *xs, const int64_t *off, int64_t M, int64_t Kp,
                    const uint8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    void be_q6_avx512(const uint8_t *xu, const float *xs, const int64_t *off, int64_t M, int64_t Kp,
                      const uint8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)


cdef int _simd = be_has_simd()
# Paths of the dense products, best last; dense_matmul(..., path=) picks another (the tests run them all).
DENSE_PATHS = ("portable",) + (("avx2",) if _simd else ()) + (("avx512",) if be_has_vnni512() else ())
_PATH_CODES = {"portable": 0, "avx2": 1, "avx512": 2}
_BEST_PATH = _PATH_CODES[DENSE_PATHS[len(DENSE_PATHS) - 1]]  # (no negative indexing: wraparound is off here)
cdef int _n_threads = max(1, openmp.omp_get_num_procs())
# Rows of the output matrix per parallel task of the dense products.
DEF NB = 64


def set_num_threads(int n):
    """Set the OpenMP threads of these ops."""
    global _n_threads
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _n_threads = n


def get_num_threads():
    """The OpenMP threads of these ops."""
    return _n_threads


def has_simd():
    """Whether the AVX2/FMA paths run on this CPU."""
    return bool(_simd)


cdef void _rmsnorm_rows(const float *x, const float *w, float *y, int64_t M, int64_t K, float eps,
                        int nt) noexcept nogil:
    """y (M, K) = RMSNorm of x's rows with w (K,); rows in parallel above 65536 elements."""
    cdef int64_t m
    if M * K < 65536 or nt == 1:
        for m in range(M):
            be_rmsnorm_row(x + m * K, w, y + m * K, K, eps)
        return
    for m in prange(M, num_threads=nt, schedule="static"):
        be_rmsnorm_row(x + m * K, w, y + m * K, K, eps)


cdef void _add_rows(float *x, const float *y, int64_t n) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        x[i] = x[i] + y[i]


def rmsnorm(const float[:, ::1] x, const float[::1] w, float eps):
    """RMSNorm of each row of x (M, K) with weight w (K,); a new float32 (M, K)."""
    cdef int64_t M = x.shape[0], K = x.shape[1]
    out = np.empty((M, K), dtype=np.float32)
    cdef float[:, ::1] y = out
    if M == 0:
        return out
    with nogil:
        _rmsnorm_rows(&x[0, 0], &w[0], &y[0, 0], M, K, eps, _n_threads)
    return out


def rope(float[:, :, ::1] x, const float[:, ::1] cos, const float[:, ::1] sin):
    """NeoX RoPE in place on x (M, H, D) with per-row cos/sin (M, D/2)."""
    cdef int64_t M = x.shape[0], H = x.shape[1], D = x.shape[2], m
    with nogil:
        for m in range(M):
            be_rope_row(&x[m, 0, 0], H, D, &cos[m, 0], &sin[m, 0])


def glu(const float[:, ::1] gu, bint relu2):
    """act(gate) * up of a fused (M, 2F) product; a new float32 (M, F)."""
    cdef int64_t M = gu.shape[0], F = gu.shape[1] // 2, m
    out = np.empty((M, F), dtype=np.float32)
    cdef float[:, ::1] y = out
    cdef int nt = _n_threads if M * F >= 65536 else 1
    if M == 0:
        return out
    if nt == 1:
        for m in range(M):
            be_glu_row(&gu[m, 0], &y[m, 0], F, relu2)
    else:
        for m in prange(M, nogil=True, num_threads=nt, schedule="static"):
            be_glu_row(&gu[m, 0], &y[m, 0], F, relu2)
    return out


def attention(const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v, int64_t start,
              float[:, ::1] out):
    """Causal GQA attention of n new rows q (n, H, D) over caches k, v (Hkv, cap, D); writes out (n, H*D)."""
    cdef int64_t n = q.shape[0], H = q.shape[1], D = q.shape[2], Hkv = k.shape[0]
    cdef int64_t group = H // Hkv, tmax = start + n, task, i, h, g
    cdef float scale = float(D) ** -0.5
    cdef int nt = _n_threads
    if n * H < 2:
        nt = 1
    scratch = np.empty((nt, tmax), dtype=np.float32)
    cdef float[:, ::1] sc = scratch
    cdef int tid
    if n == 0:
        return
    if nt == 1 or n * H * tmax < 512:
        for task in range(n * H):
            i = task // H
            h = task % H
            g = h // group
            be_attend(&q[i, h, 0], &k[g, 0, 0], &v[g, 0, 0], start + i + 1, D, scale, &sc[0, 0],
                      &out[i, h * D])
        return
    for task in prange(n * H, nogil=True, num_threads=nt, schedule="dynamic"):
        tid = openmp.omp_get_thread_num()
        i = task // H
        h = task % H
        g = h // group
        be_attend(&q[i, h, 0], &k[g, 0, 0], &v[g, 0, 0], start + i + 1, D, scale, &sc[tid, 0],
                  &out[i, h * D])


def dense_matmul(x, data, str kind, scales, path=None, offsets=None):
    """x (M, K) float32 @ W.T for W (N, K) stored as f32 / f16 / bf16 (uint16) / q8 (int8 + scales) / q6
    (52-byte groups of 64 weights + scales + offsets, see engine_simd.h).

    ``path``: one of :data:`DENSE_PATHS` (default the last, the fastest).  For q8 and q6 every path gives the
    same bits; the float kinds differ between paths in summation order only.
    """
    cdef const float[:, ::1] xv = x
    cdef int64_t M = xv.shape[0], K = xv.shape[1], N = data.shape[0]
    out = np.empty((M, N), dtype=np.float32)
    cdef float[:, ::1] y = out
    if M == 0 or N == 0:
        return out
    cdef int nt = _n_threads
    cdef int64_t nblk = (N + NB - 1) // NB, b, n0, n1
    cdef int kd
    cdef cnp.ndarray wa = data
    cdef const void *wp = cnp.PyArray_DATA(wa)
    if path is not None and path not in DENSE_PATHS:
        raise ValueError(f"path must be one of {DENSE_PATHS}, got {path!r}")
    cdef int code = _BEST_PATH if path is None else _PATH_CODES[path]
    if kind == "q8":
        return _q8(xv, wa, scales, out, code)
    if kind == "q6":
        return _q6(xv, wa, scales, offsets, out, code)
    kd = {"f32": 0, "f16": 1, "bf16": 2}[kind]
    if nblk < nt:
        nt = 1
    for b in prange(nblk, nogil=True, num_threads=nt, schedule="static"):
        n0 = b * NB
        n1 = n0 + NB
        if n1 > N:
            n1 = N
        if code == 2:
            be_dense_avx512(&xv[0, 0], M, K, wp, kd, n0, n1, &y[0, 0], N)
        elif code == 1:
            be_dense_simd(&xv[0, 0], M, K, wp, kd, n0, n1, &y[0, 0], N)
        else:
            be_dense_portable(&xv[0, 0], M, K, wp, kd, n0, n1, &y[0, 0], N)
    return out


cdef void _quantize_rows_i8(const float[:, ::1] x, int8_t[:, ::1] xq, float[::1] xs, int32_t[::1] xsum):
    """Per-row absmax int8 quantization of x (M, K) into the first K columns of xq, scales xs (M,) and row
    sums xsum (M,), as ops._q8_matmul / ops._q6_matmul define it."""
    cdef int64_t M = x.shape[0], K = x.shape[1], m, k
    cdef float amax, inv, v
    cdef int32_t acc
    for m in range(M):
        amax = 0.0
        for k in range(K):
            if fabsf(x[m, k]) > amax:
                amax = fabsf(x[m, k])
        xs[m] = amax / 127.0 if amax > 0 else 1.0
        inv = 1.0 / xs[m]
        acc = 0
        for k in range(K):
            v = rintf(x[m, k] * inv)
            if v > 127.0:
                v = 127.0
            elif v < -127.0:
                v = -127.0
            xq[m, k] = <int8_t>v
            acc = acc + <int32_t>v
        xsum[m] = acc


cdef object _q8(const float[:, ::1] x, cnp.ndarray wa, scales, out, int path):
    """int8 activations (per-row absmax) times int8 weights (per-row scales)."""
    cdef int64_t M = x.shape[0], K = x.shape[1], N = wa.shape[0], b, n0, n1
    cdef int64_t Kp = wa.shape[1]
    if wa.dtype != np.int8 or wa.ndim != 2 or Kp < K or Kp % 64 or not cnp.PyArray_IS_C_CONTIGUOUS(wa):
        raise ValueError("dense_matmul: bad q8 data")
    cdef float[:, ::1] y = out
    cdef const float[::1] ws = scales
    if ws.shape[0] != N:
        raise ValueError("dense_matmul: q8 needs scales (N,)")
    cdef const int8_t *wp = <const int8_t *>cnp.PyArray_DATA(wa)
    xs_arr = np.empty(M, dtype=np.float32)
    cdef float[::1] xs = xs_arr
    xsum_arr = np.empty(M, dtype=np.int32)
    cdef int32_t[::1] xsum = xsum_arr
    xq_arr = np.zeros((M, Kp), dtype=np.int8)  # zero-padded
    cdef int8_t[:, ::1] xq = xq_arr
    _quantize_rows_i8(x, xq, xs, xsum)
    cdef int nt = _n_threads
    cdef int64_t nblk = (N + NB - 1) // NB
    if nblk < nt:
        nt = 1
    for b in prange(nblk, nogil=True, num_threads=nt, schedule="static"):
        n0 = b * NB
        n1 = n0 + NB
        if n1 > N:
            n1 = N
        if path == 2:
            be_q8_vnni(&xq[0, 0], &xs[0], &xsum[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
        elif path == 1:
            be_q8_simd(&xq[0, 0], &xs[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
        else:
            be_q8_portable(&xq[0, 0], &xs[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
    return out


cdef void _add_rmsnorm_rows(float *x, const float *y, const float *w, float *out, int64_t M, int64_t K,
                            float eps) noexcept nogil:
    """x += y (M, K) in place, then out = RMSNorm of x's rows with w (K,)."""
    cdef int64_t m, k
    for m in range(M):
        for k in range(K):
            x[m * K + k] = x[m * K + k] + y[m * K + k]
        be_rmsnorm_row(x + m * K, w, out + m * K, K, eps)


cdef void _glu_norm_rows(const float *gu, float *y, int64_t M, int64_t F, bint relu2, const float *w, float eps,
                         int nt) noexcept nogil:
    """y (M, F) = act(gate) * up of gu (M, 2F), then RMSNorm of each row with w (F,) unless w is NULL."""
    cdef int64_t m
    if M * F < 65536 or nt == 1:
        for m in range(M):
            be_glu_row(gu + m * 2 * F, y + m * F, F, relu2)
            if w != NULL:
                be_rmsnorm_row(y + m * F, w, y + m * F, F, eps)
        return
    for m in prange(M, num_threads=nt, schedule="static"):
        be_glu_row(gu + m * 2 * F, y + m * F, F, relu2)
        if w != NULL:
            be_rmsnorm_row(y + m * F, w, y + m * F, F, eps)


cdef object _q6(const float[:, ::1] x, cnp.ndarray wa, scales, offsets, out, int path):
    """int8 activations (per-row absmax) times q6 weights; the SIMD paths read them offset to unsigned."""
    cdef int64_t M = x.shape[0], K = x.shape[1], N = wa.shape[0], b, n0, n1
    cdef int64_t Kp = wa.shape[1] // 52 * 64
    if wa.dtype != np.uint8 or wa.ndim != 2 or wa.shape[1] % 52 or Kp < K or not cnp.PyArray_IS_C_CONTIGUOUS(wa):
        raise ValueError("dense_matmul: bad q6 data")
    cdef float[:, ::1] y = out
    cdef const float[::1] ws = scales
    cdef const int64_t[::1] off = offsets
    if ws.shape[0] != N or off.shape[0] != N:
        raise ValueError("dense_matmul: q6 needs scales and offsets (N,)")
    cdef const uint8_t *wp = <const uint8_t *>cnp.PyArray_DATA(wa)
    xs_arr = np.empty(M, dtype=np.float32)
    cdef float[::1] xs = xs_arr
    xsum_arr = np.empty(M, dtype=np.int32)
    xq_arr = np.zeros((M, Kp), dtype=np.int8)  # zero-padded
    cdef int8_t[:, ::1] xq = xq_arr
    _quantize_rows_i8(x, xq, xs, xsum_arr)
    xu_arr = (xq_arr.view(np.uint8) ^ np.uint8(0x80)) if path else xq_arr  # xq + 128 as unsigned bytes
    cdef const uint8_t *xu = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>xu_arr)
    cdef int nt = _n_threads
    cdef int64_t nblk = (N + NB - 1) // NB
    if nblk < nt:
        nt = 1
    for b in prange(nblk, nogil=True, num_threads=nt, schedule="static"):
        n0 = b * NB
        n1 = n0 + NB
        if n1 > N:
            n1 = N
        if path == 2:
            be_q6_avx512(xu, &xs[0], &off[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
        elif path == 1:
            be_q6_simd(xu, &xs[0], &off[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
        else:
            be_q6_portable(&xq[0, 0], &xs[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
    return out


def add_rmsnorm(float[:, ::1] x, const float[:, ::1] y, const float[::1] w, float eps):
    """``x += y`` in place, then RMSNorm of x's rows; a new float32 (M, K)."""
    cdef int64_t M = x.shape[0], K = x.shape[1]
    out = np.empty((M, K), dtype=np.float32)
    cdef float[:, ::1] o = out
    if M == 0:
        return out
    with nogil:
        _add_rmsnorm_rows(&x[0, 0], &y[0, 0], &w[0], &o[0, 0], M, K, eps)
    return out


def glu_norm(const float[:, ::1] gu, bint relu2, w, float eps):
    """act(gate) * up of a fused (M, 2F) product, then RMSNorm with w (F,) unless w is None."""
    cdef int64_t M = gu.shape[0], F = gu.shape[1] // 2
    out = np.empty((M, F), dtype=np.float32)
    cdef float[:, ::1] y = out
    cdef const float[::1] wv
    cdef const float *wp = NULL
    if w is not None:
        wv = w
        wp = &wv[0]
    cdef int nt = _n_threads
    if M == 0:
        return out
    with nogil:
        _glu_norm_rows(&gu[0, 0], &y[0, 0], M, F, relu2, wp, eps, nt)
    return out


cdef inline void _attend(bint f16, const float *q, char *k, char *v, int64_t t, int64_t D, float scale, float *sc,
                         float *out) noexcept nogil:
    if f16:
        be_attend_f16(q, <const void *>k, <const void *>v, t, D, scale, sc, out)
    else:
        be_attend(q, <const float *>k, <const float *>v, t, D, scale, sc, out)


cdef inline void _store(bint f16, char *dst, const float *src, int64_t n) noexcept nogil:
    if f16:
        be_store_f16(dst, src, n)
    else:
        memcpy(dst, src, n * sizeof(float))


cdef void _attn_rows(float *qkv, int64_t M, int64_t nh, int64_t nkv, int64_t hd, const float *cos,
                     const float *sin, char **kp, char **vp, const int64_t *cap, const int64_t *seq_of,
                     const int64_t *pos, float *out, const float *sub_w, float eps, bint f16, float *sc,
                     int64_t tmax, int nt) noexcept nogil:
    """RoPE, cache writes and causal GQA attention of M rows of a fused (M, (nh + 2 nkv) hd) product.

    Row m belongs to sequence seq_of[m], at position pos[m]; that sequence's caches for this layer start at
    kp[s] / vp[s] (nkv, cap[s], hd) of float32 or float16 (f16).  cos / sin: (M, hd / 2).  Writes out
    (M, nh hd), then RMSNorm of its rows with sub_w unless NULL.  sc: nt * tmax floats of score scratch.
    """
    cdef int64_t qd = nh * hd, kvd = nkv * hd, ld = qd + 2 * kvd, group = nh // nkv, esz = 2 if f16 else 4
    cdef int64_t m, s, p, g, task, h
    cdef float scale = (<float>hd) ** -0.5
    cdef int tid
    cdef float *row
    for m in range(M):
        s = seq_of[m]
        p = pos[m]
        row = qkv + m * ld
        be_rope_row(row, nh, hd, cos + m * (hd // 2), sin + m * (hd // 2))
        be_rope_row(row + qd, nkv, hd, cos + m * (hd // 2), sin + m * (hd // 2))
        for g in range(nkv):
            _store(f16, kp[s] + (g * cap[s] + p) * hd * esz, row + qd + g * hd, hd)
            _store(f16, vp[s] + (g * cap[s] + p) * hd * esz, row + qd + kvd + g * hd, hd)
    if nt == 1:
        for task in range(M * nh):
            m = task // nh
            h = task % nh
            s = seq_of[m]
            _attend(f16, qkv + m * ld + h * hd, kp[s] + (h // group) * cap[s] * hd * esz,
                    vp[s] + (h // group) * cap[s] * hd * esz, pos[m] + 1, hd, scale, sc, out + m * qd + h * hd)
    else:
        for task in prange(M * nh, num_threads=nt, schedule="dynamic"):
            tid = openmp.omp_get_thread_num()
            m = task // nh
            h = task % nh
            s = seq_of[m]
            _attend(f16, qkv + m * ld + h * hd, kp[s] + (h // group) * cap[s] * hd * esz,
                    vp[s] + (h // group) * cap[s] * hd * esz, pos[m] + 1, hd, scale, sc + tid * tmax,
                    out + m * qd + h * hd)
    if sub_w != NULL:
        for m in range(M):
            be_rmsnorm_row(out + m * qd, sub_w, out + m * qd, qd, eps)


cdef inline int _attn_threads(int64_t M, int64_t nh, int64_t hd, int64_t tmax, int nt) noexcept nogil:
    """Threads for the attention of M rows: one below ~10 us of work (a second thread costs more)."""
    if M * nh < 2 or M * nh * tmax * hd < 65536:
        return 1
    return nt


cdef int64_t _seq_rows(list kcaches, list vcaches, const int64_t[::1] bounds, const int64_t[::1] starts,
                       int64_t M, int ndim, int64_t nkv, int64_t hd, int64_t layers, char **kp, char **vp,
                       int64_t *cap, int64_t *seq_of, int64_t *pos, bint *f16) except -1:
    """Check the sequences' caches ((nkv, cap, hd), or (layers, nkv, cap, hd) when ndim is 4) and rows; fill the
    cache pointers and capacities, each row's sequence and position; returns the longest sequence after the step."""
    cdef int64_t S = len(kcaches), s, m, tmax = 0, d0 = ndim - 3
    cdef cnp.ndarray kc, vc
    if len(vcaches) != S or bounds.shape[0] != S + 1 or starts.shape[0] != S or bounds[S] != M or bounds[0] != 0:
        raise ValueError("attn_block: inconsistent sequences")
    for s in range(S):  # before any row is written: every bound then lies in [0, M]
        if bounds[s + 1] < bounds[s]:
            raise ValueError("attn_block: inconsistent sequences")
    f16[0] = S > 0 and isinstance(kcaches[0], np.ndarray) and kcaches[0].dtype == np.float16
    cdef int dtype = cnp.NPY_FLOAT16 if f16[0] else cnp.NPY_FLOAT32
    if f16[0] and not BE_HAS_F16_KV:
        raise ValueError("attn_block: this build has no float16 support (a compiler with _Float16 is needed)")
    for s in range(S):
        kc = kcaches[s]
        vc = vcaches[s]
        if (cnp.PyArray_NDIM(kc) != ndim or cnp.PyArray_NDIM(vc) != ndim
                or not cnp.PyArray_IS_C_CONTIGUOUS(kc) or not cnp.PyArray_IS_C_CONTIGUOUS(vc)
                or cnp.PyArray_TYPE(kc) != dtype or cnp.PyArray_TYPE(vc) != dtype
                or (ndim == 4 and (cnp.PyArray_DIM(kc, 0) != layers or cnp.PyArray_DIM(vc, 0) != layers))
                or cnp.PyArray_DIM(kc, d0) != nkv or cnp.PyArray_DIM(kc, d0 + 2) != hd
                or cnp.PyArray_DIM(vc, d0) != nkv or cnp.PyArray_DIM(vc, d0 + 2) != hd
                or cnp.PyArray_DIM(vc, d0 + 1) != cnp.PyArray_DIM(kc, d0 + 1)):
            raise ValueError("attn_block: bad cache array")
        kp[s] = <char *>cnp.PyArray_DATA(kc)
        vp[s] = <char *>cnp.PyArray_DATA(vc)
        cap[s] = cnp.PyArray_DIM(kc, d0 + 1)
        if starts[s] < 0 or starts[s] > cap[s] - (bounds[s + 1] - bounds[s]):
            raise ValueError("attn_block: sequence overflows its cache")
        if starts[s] + bounds[s + 1] - bounds[s] > tmax:
            tmax = starts[s] + bounds[s + 1] - bounds[s]
        for m in range(bounds[s], bounds[s + 1]):
            seq_of[m] = s
            pos[m] = starts[s] + m - bounds[s]
    return tmax


def attn_block(float[:, ::1] qkv, int nh, int nkv, int hd, const float[:, ::1] cos, const float[:, ::1] sin,
               list kcaches, list vcaches, const int64_t[::1] bounds, const int64_t[::1] starts,
               float[:, ::1] out, sub_w=None, float eps=1e-5):
    """RoPE on the q/k parts of a fused (M, (nh + 2 nkv) hd) product, cache writes, causal GQA attention.

    Sequence s owns rows [bounds[s], bounds[s+1]) at positions starts[s] + i, and the caches
    kcaches[s], vcaches[s] (nkv, cap, hd), all float32 or all float16 (stored rounded to nearest).  Writes
    out (M, nh * hd), then RMSNorm of its rows with sub_w (nh * hd,) unless sub_w is None.
    """
    cdef const float[::1] swv
    cdef const float *swp = NULL
    if sub_w is not None:
        swv = sub_w
        swp = &swv[0]
    cdef int64_t M = qkv.shape[0], S = len(kcaches), tmax
    if M == 0:
        return
    if qkv.shape[1] != (nh + 2 * nkv) * hd or out.shape[0] != M or out.shape[1] != nh * hd:
        raise ValueError("attn_block: bad shapes")
    if cos.shape[0] < M or sin.shape[0] < M or cos.shape[1] != hd // 2 or sin.shape[1] != hd // 2:
        raise ValueError("attn_block: bad cos / sin")
    cdef char **kp = <char **>malloc((S + 1) * sizeof(char *))
    cdef char **vp = <char **>malloc((S + 1) * sizeof(char *))
    cdef int64_t *cap = <int64_t *>malloc((S + 1) * sizeof(int64_t))
    cdef int64_t *seq_of = <int64_t *>malloc(2 * M * sizeof(int64_t))
    cdef float *sc = NULL
    cdef bint f16 = False
    cdef int nt
    try:
        if kp == NULL or vp == NULL or cap == NULL or seq_of == NULL:
            raise MemoryError()
        tmax = _seq_rows(kcaches, vcaches, bounds, starts, M, 3, nkv, hd, 0, kp, vp, cap, seq_of, seq_of + M,
                         &f16)
        nt = _attn_threads(M, nh, hd, tmax, _n_threads)
        sc = <float *>malloc(nt * tmax * sizeof(float))
        if sc == NULL:
            raise MemoryError()
        with nogil:
            _attn_rows(&qkv[0, 0], M, nh, nkv, hd, &cos[0, 0], &sin[0, 0], kp, vp, cap, seq_of, seq_of + M,
                       &out[0, 0], swp, eps, f16, sc, tmax, nt)
    finally:
        free(kp)
        free(vp)
        free(cap)
        free(seq_of)
        free(sc)


# ------------------------------------------------------------------------------------------------------------
# the compiled layer loop


ctypedef struct _lin_t:
    const uint8_t *W   # packed codes (N, rb)
    const float *rscale  # (N,) or NULL
    float scale
    int64_t N
    int64_t K
    int64_t rb


ctypedef struct _layer_t:
    const float *attn_norm
    const float *attn_sub  # or NULL
    const float *ffn_norm
    const float *ffn_sub  # or NULL
    _lin_t qkv
    _lin_t o
    _lin_t gu
    _lin_t down


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void _lap(double *tp, int k, double *t0) noexcept nogil:
    """Add the time since t0 to tp[k] and restart the clock there (nothing when tp is NULL)."""
    cdef double t1
    if tp != NULL:
        t1 = _now()
        tp[k] += t1 - t0[0]
        t0[0] = t1


cdef inline int _linear(const float *x, int64_t M, const _lin_t *lin, float *out, tl_scratch *ts) noexcept nogil:
    """One of a layer's ternary products; returns tl_linear's count of non-finite rows."""
    return tl_linear(x, M, lin.K, lin.W, lin.N, lin.rb, lin.rscale, lin.scale, out, ts)


cdef class LayerStack:
    """Every decoder layer of a model whose linear layers are all plain ternary products, run by one call.

    :meth:`forward` runs what the per-op Python loop of :class:`bitnet_actor.engine.model.Model` runs (the same
    C functions on the same rows in the same order, so the same bits), without a Python call per op: the
    per-token cost outside the kernels no longer grows with the depth of the model.
    """

    cdef _layer_t *layers
    cdef int64_t L, H, F, nh, nkv, hd, max_kp
    cdef bint relu2
    cdef float eps
    cdef list _keep

    def __cinit__(self):
        self.layers = NULL
        self.L = 0

    def __init__(self, list specs, int nh, int nkv, int hd, bint relu2, float eps):
        """Args:
            specs: per layer ``(attn_norm, qkv, attn_sub_norm, o, ffn_norm, gate_up, down, ffn_sub_norm)``:
                float32 norm weights (the sub-norms may be None) and :class:`kernels_cython.TernaryMatrix`
                products (q/k/v fused, gate/up fused), each with one scale or per-row scales.
            nh, nkv, hd: attention heads, key/value heads, head size.
            relu2: squared ReLU (else SiLU) gate.
            eps: the RMSNorm epsilon.

        Raises:
            ValueError: inconsistent shapes, dtypes or layouts.
        """
        cdef int64_t L = len(specs), li
        if L == 0 or nh <= 0 or nkv <= 0 or hd <= 0 or hd % 2 or nh % nkv:
            raise ValueError("LayerStack: bad shape")
        if self.layers != NULL:
            raise ValueError("LayerStack: already initialized")
        self.nh = nh
        self.nkv = nkv
        self.hd = hd
        self.relu2 = relu2
        self.eps = eps
        self._keep = []
        self.layers = <_layer_t *>malloc(L * sizeof(_layer_t))
        if self.layers == NULL:
            raise MemoryError()
        cdef int64_t qd = nh * hd, kvd = nkv * hd
        self.H = specs[0][1].shape[1]
        self.F = specs[0][5].shape[0] // 2
        self.max_kp = 0
        for li in range(L):
            attn_norm, qkv, attn_sub, o, ffn_norm, gu, down, ffn_sub = specs[li]
            self.layers[li].attn_norm = self._vec(attn_norm, self.H, False)
            self.layers[li].attn_sub = self._vec(attn_sub, qd, True)
            self.layers[li].ffn_norm = self._vec(ffn_norm, self.H, False)
            self.layers[li].ffn_sub = self._vec(ffn_sub, self.F, True)
            self._lin(&self.layers[li].qkv, qkv, qd + 2 * kvd, self.H)
            self._lin(&self.layers[li].o, o, self.H, qd)
            self._lin(&self.layers[li].gu, gu, 2 * self.F, self.H)
            self._lin(&self.layers[li].down, down, self.H, self.F)
        self.L = L  # only now: a stack whose construction failed has no layers to run

    def __dealloc__(self):
        free(self.layers)

    cdef const float *_vec(self, w, int64_t n, bint optional) except? NULL:
        if w is None and optional:
            return NULL
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.shape != (n,) or not w.flags.c_contiguous:
            raise ValueError(f"LayerStack: a norm weight must be float32 ({n},)")
        self._keep.append(w)
        return <const float *>cnp.PyArray_DATA(<cnp.ndarray>w)

    cdef int _lin(self, _lin_t *lin, w, int64_t N, int64_t K) except -1:
        packed = w.packed
        if (tuple(w.shape) != (N, K) or not isinstance(packed, np.ndarray) or packed.dtype != np.uint8
                or packed.ndim != 2 or packed.shape[0] != N or packed.shape[1] * 4 < K or packed.shape[1] % 32
                or not packed.flags.c_contiguous):
            raise ValueError(f"LayerStack: a ({N}, {K}) ternary product has the wrong shape or layout")
        rs = w.row_scale
        if rs is not None:
            if not isinstance(rs, np.ndarray) or rs.dtype != np.float32 or rs.shape != (N,) or not rs.flags.c_contiguous:
                raise ValueError("LayerStack: per-row scales must be float32 (N,)")
            lin.rscale = <const float *>cnp.PyArray_DATA(<cnp.ndarray>rs)
            lin.scale = 1.0
            self._keep.append(rs)
        elif isinstance(w.scale, float):
            lin.rscale = NULL
            lin.scale = <float>w.scale
        else:
            raise ValueError("LayerStack: per-block scales are not supported (use the per-op path)")
        self._keep.append(packed)
        lin.W = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>packed)
        lin.N = N
        lin.K = K
        lin.rb = packed.shape[1]
        if lin.rb * 4 > self.max_kp:
            self.max_kp = lin.rb * 4
        return 0

    @property
    def num_layers(self):
        """Decoder layers."""
        return self.L

    def forward(self, float[:, ::1] x, const float[:, ::1] cos, const float[:, ::1] sin, list kcaches,
                list vcaches, const int64_t[::1] bounds, const int64_t[::1] starts, double[::1] timings=None):
        """Run every layer on the residual stream x (M, H), in place.

        Args:
            x: float32 (M, H): the embeddings in, the last layer's residual stream out.
            cos, sin: float32 (M, hd / 2) for each row's position.
            kcaches, vcaches: per sequence, its caches (layers, nkv, cap, hd), all float32 or all float16.
            bounds: int64 (S + 1,): sequence s owns rows bounds[s] .. bounds[s + 1].
            starts: int64 (S,): position of each sequence's first row.
            timings: float64 (3,) or None: seconds spent in the ternary products, attention and the other ops
                are added to it.

        Raises:
            ValueError: inconsistent arguments, or activations that became NaN / inf.
        """
        cdef int64_t M = x.shape[0], S = len(kcaches), H = self.H, F = self.F, L = self.L
        cdef int64_t nh = self.nh, nkv = self.nkv, hd = self.hd, qd = nh * hd, kvd = nkv * hd
        cdef int64_t tmax, li, s, esz
        if self.layers == NULL or L == 0:
            raise ValueError("LayerStack.forward: the stack was not initialized")
        if M == 0:
            return
        if x.shape[1] != H:
            raise ValueError(f"LayerStack.forward: x must have {H} columns")
        if cos.shape[0] < M or sin.shape[0] < M or cos.shape[1] != hd // 2 or sin.shape[1] != hd // 2:
            raise ValueError("LayerStack.forward: bad cos / sin")
        if timings is not None and timings.shape[0] < 3:
            raise ValueError("LayerStack.forward: timings needs 3 entries")
        cdef double *tp = &timings[0] if timings is not None else NULL
        cdef int nt = _n_threads
        cdef int64_t wide = qd + 2 * kvd if qd + 2 * kvd > 2 * F else 2 * F
        cdef int64_t nf = M * (H + wide + qd + H + F)
        cdef float *buf = <float *>malloc(nf * sizeof(float))
        cdef char **kb = <char **>malloc(4 * (S + 1) * sizeof(char *))
        cdef int64_t *cap = <int64_t *>malloc((S + 1) * sizeof(int64_t))
        cdef int64_t *seq_of = <int64_t *>malloc(2 * M * sizeof(int64_t))
        cdef float *sc = NULL
        cdef tl_scratch ts
        ts.base = NULL
        cdef bint f16 = False
        cdef int bad = 0, nta
        cdef float *h
        cdef float *wide_buf
        cdef float *attn
        cdef float *tmp
        cdef float *act
        cdef char **kp
        cdef char **vp
        cdef char **kl
        cdef char **vl
        cdef const _layer_t *ly
        cdef double t0 = 0
        try:
            if buf == NULL or kb == NULL or cap == NULL or seq_of == NULL:
                raise MemoryError()
            kp = kb
            vp = kb + (S + 1)
            kl = kb + 2 * (S + 1)
            vl = kb + 3 * (S + 1)
            tmax = _seq_rows(kcaches, vcaches, bounds, starts, M, 4, nkv, hd, L, kp, vp, cap, seq_of, seq_of + M,
                             &f16)
            esz = 2 if f16 else 4
            nta = _attn_threads(M, nh, hd, tmax, nt)
            sc = <float *>malloc(nta * tmax * sizeof(float))
            if sc == NULL:
                raise MemoryError()
            # the ternary products take the kernels' thread count ($BITNET_THREADS), as in the per-op path
            if tl_scratch_init(&ts, M, self.max_kp, tl_default_threads(), True, tl_default_isa()):
                raise MemoryError("cannot allocate activation scratch")
            h = buf
            wide_buf = h + M * H
            attn = wide_buf + M * wide
            tmp = attn + M * qd
            act = tmp + M * H
            with nogil:
                if tp != NULL:
                    t0 = _now()
                _rmsnorm_rows(&x[0, 0], self.layers[0].attn_norm, h, M, H, self.eps, nt)
                for li in range(L):
                    ly = &self.layers[li]
                    _lap(tp, 2, &t0)
                    bad = _linear(h, M, &ly.qkv, wide_buf, &ts)
                    if bad:
                        break
                    _lap(tp, 0, &t0)
                    for s in range(S):
                        kl[s] = kp[s] + li * nkv * cap[s] * hd * esz
                        vl[s] = vp[s] + li * nkv * cap[s] * hd * esz
                    _attn_rows(wide_buf, M, nh, nkv, hd, &cos[0, 0], &sin[0, 0], kl, vl, cap, seq_of, seq_of + M,
                               attn, ly.attn_sub, self.eps, f16, sc, tmax, nta)
                    _lap(tp, 1, &t0)
                    bad = _linear(attn, M, &ly.o, tmp, &ts)
                    if bad:
                        break
                    _lap(tp, 0, &t0)
                    _add_rmsnorm_rows(&x[0, 0], tmp, ly.ffn_norm, h, M, H, self.eps)
                    _lap(tp, 2, &t0)
                    bad = _linear(h, M, &ly.gu, wide_buf, &ts)
                    if bad:
                        break
                    _lap(tp, 0, &t0)
                    _glu_norm_rows(wide_buf, act, M, F, self.relu2, ly.ffn_sub, self.eps, nt)
                    _lap(tp, 2, &t0)
                    bad = _linear(act, M, &ly.down, tmp, &ts)
                    if bad:
                        break
                    _lap(tp, 0, &t0)
                    if li + 1 < L:
                        _add_rmsnorm_rows(&x[0, 0], tmp, self.layers[li + 1].attn_norm, h, M, H, self.eps)
                    else:
                        _add_rows(&x[0, 0], tmp, M * H)
                _lap(tp, 2, &t0)
            if bad:
                raise ValueError("x contains NaN or inf")
        finally:
            free(buf)
            free(kb)
            free(cap)
            free(seq_of)
            free(sc)
            tl_scratch_free(&ts)
